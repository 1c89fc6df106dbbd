"""logplex: a distributed syslog log router on Twisted."""

__version__ = "0.1.0"
