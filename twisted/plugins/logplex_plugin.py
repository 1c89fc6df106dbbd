from twisted.application.service import ServiceMaker

logplex = ServiceMaker(
    "logplex", "logplex.tap", "A distributed syslog log router.", "logplex"
)
