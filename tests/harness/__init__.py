"""The one way tests and benchmarks start redis-server, logplex nodes, sinks and senders.

    procs     RedisServer, OperatedRedis (TLS, ACL, sentinel), NodeProcess (`twistd -n logplex`
              of this checkout), free_port, Resp (a blocking RESP client)
    client    Node (its API, /logs and syslog listeners), Sender (syslog over TCP, in order), the
              wire formats, start_node/stop_node, the admin shell over ssh
    sinks     HttpSink (Twisted, recording, misbehaving on command), ThreadSink (blocking)
    syslog_sink  SyslogSink (Twisted, recording by connection)
    senders   the real senders: rsyslogd, syslog-ng, loggen (standard library only, for .ci/run)
    shuttle   a log-shuttle work-alike (POST /logs as log-shuttle sends it)
    cluster   World: a config Redis, shard Redis and nodes a, b, c, with the blocking tools on them
    trial     NodeCase: trial tests against real nodes with Twisted sinks in the reactor
    certs     a test CA issuing server and client certificates; tls: an RSA PKI and HTTPS nodes
    browser   headless Chromium for the tail page

bench/ imports these too (with the repository root on sys.path).
"""
