"""HTTP drain client cost: node CPU (and instructions) per POST of a small batch to a local sink.

The client is the node's own (logplex.drains.http.make_client, HttpDrainTransport),
run in this process on the default reactor; the sink is bench/countsink.c in a
process of its own, so the figures are the client's alone: the request made, written,
its answer read and classified, the connection kept. --drains drains of one host
each keep one batch in flight, as a node's do.

    python bench/http_post.py --posts 20000 --rounds 5      # CPU us per POST, median and spread
    python bench/http_post.py --instructions --posts 3000   # instructions per POST under callgrind

--instructions runs this script under ``valgrind --tool=callgrind`` twice, with
--posts and with none (only the warm-up round), and divides the difference: a
count a busy host does not disturb.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

LINE = b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - bench line of an ordinary size, say 80 bytes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sink(tmp: str) -> tuple[subprocess.Popen, int]:
    binary = os.path.join(tmp, "countsink")
    subprocess.run(["gcc", "-O2", "-o", binary, os.path.join(HERE, "countsink.c"), "-lm"], check=True)
    port = free_port()
    sink = subprocess.Popen([binary, "http", "--port", str(port), "--stats", os.path.join(tmp, "stats.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return sink, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("countsink did not start listening")


def run(port: int, drains: int, posts: int, lines: int) -> None:
    """POST `posts` batches (after one warm-up batch per drain); print CPU seconds and POSTs."""
    from twisted.internet import defer, reactor

    from logplex.drains.http import HttpDrainTransport, make_client
    from logplex.model import Drain

    client = make_client(reactor)
    transports = [HttpDrainTransport(Drain(i, "app", f"d.tok{i}", f"http://127.0.0.1:{port}/logs/{i}"),
                                     client, reactor, timeout=10.0) for i in range(drains)]
    batch = [LINE] * lines
    state = {"left": posts, "running": drains, "bad": 0}
    marks = {}

    def loop(transport, frame: int) -> defer.Deferred:
        d = transport.send(batch, f"{frame:016x}")

        def done(outcome):
            if not outcome.delivered:
                state["bad"] += 1
            if state["left"] > 0:
                state["left"] -= 1
                loop(transport, frame + 1)  # not returned: no chain of Deferreds across POSTs
                return
            state["running"] -= 1
            if not state["running"]:
                marks["end"] = os.times()
                reactor.stop()
        return d.addCallback(done)

    def warmed(_):
        marks["start"] = os.times()
        for i, transport in enumerate(transports):
            loop(transport, i << 32)

    # One POST per drain first: the connections are open before the count starts.
    warm = [t.send(batch, f"{i:016x}") for i, t in enumerate(transports)]
    defer.gatherResults(warm).addCallback(warmed)
    reactor.run()
    start, end = marks["start"], marks["end"]
    cpu = (end.user - start.user) + (end.system - start.system)
    print(f"{cpu} {posts} {state['bad']}")


def instructions(port: int, args) -> float:
    totals = []
    for n in (0, args.posts):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "cg.out")
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
                 "--run", str(port), "--drains", str(args.drains), "--posts", str(n), "--lines", str(args.lines)],
                capture_output=True, text=True, check=True)
            totals.append(int(re.search(r"Collected : (\d+)", done.stderr).group(1)))
    return (totals[1] - totals[0]) / args.posts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--posts", type=int, default=20000)
    p.add_argument("--drains", type=int, default=50, help="drains of the one sink host, one batch in flight each")
    p.add_argument("--lines", type=int, default=10, help="messages per batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--instructions", action="store_true", help="count instructions per POST under callgrind")
    p.add_argument("--run", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        run(args.run, args.drains, args.posts, args.lines)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sink, port = start_sink(tmp)
        try:
            print(" ".join(sys.argv))
            if args.instructions:
                print(f"instructions per POST: {instructions(port, args):,.0f}")
                return
            per_post = []
            for _ in range(args.rounds):
                done = subprocess.run([sys.executable, __file__, "--run", str(port), "--drains", str(args.drains),
                                       "--posts", str(args.posts), "--lines", str(args.lines)],
                                      capture_output=True, text=True, check=True)
                cpu, posts, bad = done.stdout.split()
                if int(bad):
                    print(f"  {bad} POSTs not delivered")
                per_post.append(float(cpu) / int(posts) * 1e6)
            print("CPU us per POST: " + " ".join(f"{x:.1f}" for x in per_post))
            print(f"median {statistics.median(per_post):.1f}, min {min(per_post):.1f}, max {max(per_post):.1f}")
        finally:
            sink.terminate()
            sink.wait()
        with open(os.path.join(tmp, "stats.json")) as f:
            stats = json.load(f)
        print(f"sink: {stats['requests']} requests on {stats['connections']} connections")


if __name__ == "__main__":
    main()
