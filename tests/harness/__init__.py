"""The one way tests and benchmarks start redis-server, logplex nodes, sinks and senders.

    procs     RedisServer, OperatedRedis (TLS, ACL, sentinel), NodeProcess (`twistd -n logplex`
              of this checkout), free_port, Resp (a blocking RESP client)
    client    Node (its API, /logs and syslog listeners), the wire formats, start_node/stop_node
    sinks     HttpSink and SyslogSink (Twisted, recording, misbehaving on command), ThreadSink
    senders   Sender (syslog over TCP), and the real senders: rsyslogd, syslog-ng, loggen, log-shuttle
    cluster   World: a config Redis, shard Redis and nodes a, b, c, with the blocking tools on them
    trial     NodeCase: trial tests against real nodes with Twisted sinks in the reactor
    certs     a test CA issuing server and client certificates; tls: an RSA PKI and HTTPS nodes
    browser   headless Chromium for the tail page

bench/ imports these too (with the repository root on sys.path).
"""
