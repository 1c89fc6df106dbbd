"""Run README's node command for real and check a log line goes in and comes back.

Used by .ci/run against the installed package: `twistd -n logplex --auth
admin:secret` with its embedded Redis, on the default ports, in a fresh
directory; then SIGTERM, and no redis-server may survive it.
"""

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

AUTH = "Basic " + base64.b64encode(b"admin:secret").decode()


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": AUTH})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def wait(predicate, timeout, what):
    if not within(predicate, timeout):
        raise SystemExit(f"smoke: timed out waiting for {what}")


def within(predicate, timeout):
    """Whether predicate() came true within timeout seconds (polled: the node is another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--twistd", default="twistd")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="logplex-smoke-")
    log = open(os.path.join(workdir, "node.log"), "wb")
    node = subprocess.Popen(
        [args.twistd, "-n", "--pidfile=", "logplex", "--stop-grace", "0", "--auth", "admin:secret"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait(lambda: call("GET", "http://127.0.0.1:8001/healthcheck")[0] == 200, 60, "healthcheck")
        status, body = call("PUT", "http://127.0.0.1:8001/v3/channels/smoke", {"tokens": ["app"]})
        token = json.loads(body)["tokens"]["app"]
        line = f"<13>1 2026-11-24T10:00:00+00:00 host {token} web.1 - - smoke test line".encode()

        def arrived():
            _, logs = call("GET", "http://127.0.0.1:8001/v3/channels/smoke/logs?num=5")
            return b"host app web.1 - smoke test line" in logs

        # The channel was made through one of the node's workers; a line the other reads
        # first waits for that worker's config to catch up (README, "Syslog over TCP").
        with socket.create_connection(("127.0.0.1", 6001)) as s:
            s.sendall(b"%d %s" % (len(line), line))
        wait(arrived, 10, "the line in the channel's backlog")
        redis_pid = _embedded_redis_pid(workdir)
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=30)
        # twistd ends a clean shutdown by re-raising the signal it got.
        if code not in (0, -signal.SIGTERM):
            raise SystemExit(f"smoke: node exited {code}")
        if _alive(redis_pid):
            raise SystemExit(f"smoke: embedded redis-server {redis_pid} survived the node")
        print("smoke: node booted, routed a line, stopped cleanly; embedded redis gone")
    except BaseException:
        node.kill()
        node.wait()
        log.flush()
        sys.stderr.write(open(os.path.join(workdir, "node.log")).read()[-4000:])
        raise


def _embedded_redis_pid(workdir):
    # redis-server rewrites its command line, but it works in its data dir.
    data_dir = os.path.realpath(os.path.join(workdir, "logplex-data"))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if comm.startswith("redis-server") and cwd == data_dir:
            return int(pid)
    raise SystemExit("smoke: no embedded redis-server found running in the data dir")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = open(f"/proc/{pid}/stat").read().split()[2]
    return state != "Z"


if __name__ == "__main__":
    main()
