"""Per-message cost of the hot loops, pure Python against logplex._hot, in one process.

Stages, each over realistic ~200-byte log-shuttle messages:

- framer: SyslogFramer.feed of 64 KiB reads of octet-counted frames;
- split_header+cook: syslog.split_header then syslog.cook (the router's calls per
  message before its whole loop was compiled);
- route loop: router.group over a read of 1,000 messages of ten tokens (the
  router's whole per-message loop: token to channel, cook, grouping);
- drain body: drains.formats.http_body of a 1,000-message batch;
- resp: _Protocol._build_command of one LPUSH of 1,000 messages (a backlog flush).

Usage:
    python bench/hot.py                       # ns/message table, best of --repeat runs
    python bench/hot.py --instructions        # also instructions/message under callgrind

--instructions runs this script under ``valgrind --tool=callgrind`` once per
stage, path and loop count (0 and --calls), and takes the difference, so the
interpreter's start-up and imports cancel out; a busy host does not change it.
Needs logplex._hot built (``python setup.py build_ext --inplace``).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from logplex import _hot, framing, router, syslog  # noqa: E402
from logplex.drains import formats as drain_formats  # noqa: E402
from logplex.redis import connection  # noqa: E402

_hot.bind_framing(framing._scan, framing._strip)
_hot.bind_syslog(syslog.pure_split_header, syslog.pure_cook)

TOKEN = b"t.8b2e4c1a-9f3d-4e5b-a6c7-d8e9f0a1b2c3"


def messages(count: int) -> list[bytes]:
    """Raw log-shuttle lines of about 200 bytes, as ingest sees them."""
    out = []
    for i in range(count):
        head = b"<190>1 2026-11-24T22:47:49.%06d+00:00 shuttle %s web.%d - - " % (i % 1000000, TOKEN, i % 8)
        body = b"at=info method=GET path=/api/items/%d host=example.com fwd=10.0.0.%d status=200 bytes=%d " % (
            i, i % 250, 1000 + i)
        out.append((head + body + b"x" * 200)[:200])
    return out


MESSAGES = messages(1000)
COOKED = [syslog.pure_cook(syslog.pure_split_header(m), b"app") for m in MESSAGES]
# 64 KiB reads cut anywhere, as TCP delivers them.
STREAM = framing.encode_logplex1(MESSAGES * 4)
READS = [STREAM[i:i + 65536] for i in range(0, len(STREAM), 65536)]
PROTOCOL = connection._Protocol()


def framer_stage(scan: Callable) -> Callable[[], int]:
    def run() -> int:
        saved, framing.scan = framing.scan, scan
        try:
            framer = framing.SyslogFramer()
            count = 0
            for read in READS:
                count += len(framer.feed(read))
            return count
        finally:
            framing.scan = saved
    return run


def route_stage(split_header: Callable, cook: Callable) -> Callable[[], int]:
    def run() -> int:
        out = []
        append = out.append
        for message in MESSAGES:
            parts = split_header(message)
            append(cook(parts, b"app"))
        return len(out)
    return run


def group_stage(group: Callable) -> Callable[[], int]:
    """The router's whole loop over one read: token to channel, cook, group (ten channels, runs of one token)."""
    routes = {b"t.%d" % i: ("channel-%d" % i, b"app") for i in range(10)}
    read = [m.replace(TOKEN, b"t.%d" % (i // 50 % 10)) for i, m in enumerate(MESSAGES)]

    def odd(message: bytes) -> None:
        raise AssertionError("every message of the bench is plain")

    def run() -> int:
        return sum(map(len, group(read, routes, None, odd).values()))
    return run


def body_stage(http_body: Callable) -> Callable[[], int]:
    def run() -> int:
        return http_body(COOKED)[1]
    return run


def resp_stage(build: Callable) -> Callable[[], int]:
    args = (b"LPUSH", b"ch:1:spool", *COOKED)

    def run() -> int:
        build(args)
        return len(COOKED)
    return run


STAGES: dict[str, dict[str, Callable[[], int]]] = {
    "framer": {"pure": framer_stage(framing._scan), "compiled": framer_stage(_hot.scan)},
    "split_header+cook": {"pure": route_stage(syslog.pure_split_header, syslog.pure_cook),
                          "compiled": route_stage(_hot.split_header, _hot.cook)},
    "route loop": {"pure": group_stage(router.pure_group), "compiled": group_stage(_hot.group)},
    "drain body": {"pure": body_stage(drain_formats.http_body), "compiled": body_stage(_hot.http_body)},
    "resp": {"pure": resp_stage(lambda args: connection._Protocol._build_command(PROTOCOL, *args)),
             "compiled": resp_stage(lambda args: _hot.build_command(args, PROTOCOL._encode_value))},
}


def ns_per_message(run: Callable[[], int], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        calls = 0
        count = 0
        start = time.perf_counter_ns()
        while True:
            count += run()
            calls += 1
            elapsed = time.perf_counter_ns() - start
            if elapsed > 50_000_000:
                break
        best = min(best, elapsed / count)
    return best


def callgrind_instructions(stage: str, path: str, calls: int) -> float:
    """Instructions per message of one stage, the start-up cancelled by a run of 0 calls."""
    totals = []
    for n in (0, calls):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "cg.out")
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                 __file__, "--run", stage, path, str(n)],
                capture_output=True, text=True, check=True)
            match = re.search(r"Collected : (\d+)", done.stderr)
            totals.append(int(match.group(1)))
            count = int(done.stdout.strip() or 0)
    return (totals[1] - totals[0]) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--instructions", action="store_true", help="also count instructions under callgrind")
    parser.add_argument("--calls", type=int, default=10, help="loop calls per callgrind run")
    parser.add_argument("--run", nargs=3, metavar=("STAGE", "PATH", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        stage, path, calls = args.run
        run = STAGES[stage][path]
        # The imports' objects out of the collector's way, as in a node that
        # has run a while: otherwise one full collection that happens to fall
        # in the measured run (and not in the run of 0 calls) is counted.
        gc.collect()
        gc.freeze()
        print(sum(run() for _ in range(int(calls))))
        return
    header = f"{'stage':<24}{'pure ns/msg':>13}{'compiled':>10}{'speed-up':>10}"
    if args.instructions:
        header += f"{'pure instr/msg':>16}{'compiled':>10}"
    print(header)
    for stage, paths in STAGES.items():
        pure = ns_per_message(paths["pure"], args.repeat)
        fast = ns_per_message(paths["compiled"], args.repeat)
        line = f"{stage:<24}{pure:>13.0f}{fast:>10.0f}{pure / fast:>9.1f}x"
        if args.instructions:
            line += f"{callgrind_instructions(stage, 'pure', args.calls):>16.0f}"
            line += f"{callgrind_instructions(stage, 'compiled', args.calls):>10.0f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
