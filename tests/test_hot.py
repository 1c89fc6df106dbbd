"""The compiled twins (logplex/_hot.pyx) against their pure-Python functions, on adversarial input.

Each example is a seed: a PRNG built from it writes a stream of frames (octet
counted and LF-terminated, with trailers, stray bytes, bad, huge, negative and
zero-padded counts) around messages (RFC 5424 with and without structured
data, RFC 3164 lines, non-ASCII, BOMs, forbidden header bytes, random bytes),
and every function pair must give the same result, or raise the same error
after the same messages, on all of it: the stream scanned from several
positions and with several frame limits, fed to a framer in random reads,
decoded as a logplex-1 body; each message split, cooked and formatted for
drains; the messages grouped by the router's loop against random routes; a
drain queue's batch cut from them; the backlog writer's queue and script
calls of them; RESP commands of its pieces; a text tail's lines of them. Raw
hypothesis bytes get the same checks.

Examples: LOGPLEX_HOT_EXAMPLES (300 by default; .ci/run sets more). The module
skips, saying why, when the extension is not built, unless
LOGPLEX_REQUIRE_COMPILED=1 (as in CI), which makes that an error.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logplex import framing, router, syslog
from logplex.backlog import writer as backlog_writer
from logplex.drains import formats as drain_formats
from logplex.drains import queue as drain_queue
from logplex.redis import connection
from logplex.tails import session as tail_session

try:
    from logplex import _hot
except ImportError as error:
    if os.environ.get("LOGPLEX_REQUIRE_COMPILED") == "1":
        raise RuntimeError(
            f"LOGPLEX_REQUIRE_COMPILED=1 but logplex._hot is not built ({error}): run "
            "`python setup.py build_ext --inplace` (needs Cython and a C compiler)."
        ) from error
    pytest.skip(
        f"SKIPPED the compiled/pure differential test: logplex._hot is not built ({error}); "
        "build it with `python setup.py build_ext --inplace`",
        allow_module_level=True,
    )

EXAMPLES = int(os.environ.get("LOGPLEX_HOT_EXAMPLES", "300"))
HOT = settings(max_examples=EXAMPLES, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))

# The twins hand unusual input to these; binding them here makes the test
# independent of LOGPLEX_PURE_PYTHON (which leaves them unbound).
_hot.bind_framing(framing._scan, framing._strip)
_hot.bind_syslog(syslog.pure_split_header, syslog.pure_cook)


def outcome(function: Callable, *args) -> tuple:
    """What a call gave: ("ok", result) or ("raised", type, message, messages before it)."""
    try:
        return ("ok", function(*args))
    except Exception as e:  # noqa: BLE001 - every error must match its twin's
        return ("raised", type(e), str(e), getattr(e, "messages", None))


# == input ===========================================================================================
PRINTABLE = bytes(range(33, 127))
BAD_HEADER_BYTES = [b"\n", b"\x00", b"\r", b"\x1b", b"\t", b"\x7f", b"\x85", b"\xff", b"\xc3\xa9"]
BOM = b"\xef\xbb\xbf"
SD = [b"-", b'[id a="b"]', b'[x@1 k="v\\"]"][y@2]', b"[ ]", b"[", b'[a b="', b"[a]x", b"-x", b"[a][b c=\"d\"]"]
MSG = [b"", b"hello world", b"caf\xc3\xa9 \xe2\x82\xac", BOM + b"bom", b"tab\there", b"nul\x00in",
       b"line\n", b"crlf\r\n", b"\xff\xfe\xed\xa0\x80", b"x" * 300, b" leading", b"- dash"]
PRIS = [b"<13>1", b"<0>1", b"<191>1", b"<192>1", b"<013>1", b"<00>1", b"<0013>1", b"<1>2", b"<13>",
        b"<>1", b"13>1", b"<1a>1", b"<-1>1"]
RFC3164 = [b"<13>Jan  5 10:00:00 host tag[12]: msg", b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed",
           b"<13>Feb 30 10:00:00 tag: x", b"<13>Dec 31 24:00:00 h t: m", b"<191>Mar  1 01:02:03 web.1 - -"]
COUNT_JUNK = [b"12x ", b"99999999999 ", b"9999999999 ", b"-5 ", b"00000000001 ", b"0000000003 ",
              b"0 ", b"65537 ", b"1", b"12", b" ", b"x"]


def field(rng: random.Random, clean: bool = False) -> bytes:
    roll = rng.random() * (0.85 if clean else 1.0)
    if roll < 0.7:
        return rng.choice([b"-", b"host", b"web.1", b"2026-11-24T10:00:00.123456+00:00", b"t.abc", b"app"])
    if roll < 0.85:
        return bytes(rng.choice(PRINTABLE) for _ in range(rng.randint(1, 12)))
    if roll < 0.93:
        return b""  # an empty field: two SPs
    return b"ok" + rng.choice(BAD_HEADER_BYTES) + b"x"


def message(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.6:
        # Half of them well-formed headers, so the twins' own paths run often.
        clean = rng.random() < 0.5
        pri = rng.choice(PRIS) if not clean and rng.random() < 0.3 else b"<%d>1" % rng.randint(0, 191)
        fields = [field(rng, clean) for _ in range(5)]
        if not clean and rng.random() < 0.1:
            fields = fields[: rng.randint(0, 4)]
        head = b" ".join([pri, *fields])
        tail = b"-" if clean and rng.random() < 0.5 else rng.choice(SD)
        if rng.random() < 0.8:
            tail += b" " + rng.choice(MSG)
        elif rng.random() < 0.5:
            tail = b""
        return head + b" " + tail
    if roll < 0.75:
        return rng.choice(RFC3164)
    if roll < 0.9:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
    return rng.choice(MSG)


def frame(rng: random.Random, msg: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.5:
        body = msg + rng.choice([b"", b"", b"\n", b"\r\n", b"\x00", b"\n\x00"])
        count = b"%d" % len(body)
        if rng.random() < 0.05:
            count = b"00" + count
        return count + b" " + body + rng.choice([b"", b"", b"\n"])
    if roll < 0.85:
        return msg.replace(b"\n", b" ") + rng.choice([b"\n", b"\r\n", b"\x00\n"])
    if roll < 0.95:
        return rng.choice([b"\n", b"\r", b"\x00", b"\r\n"])
    return rng.choice(COUNT_JUNK) + msg


def stream(rng: random.Random) -> tuple[bytes, list[bytes]]:
    messages = [message(rng) for _ in range(rng.randint(0, 12))]
    return b"".join(frame(rng, m) for m in messages), messages


def cuts(rng: random.Random, size: int) -> list[int]:
    return sorted(rng.randint(0, size) for _ in range(rng.randint(0, 6)))


@contextmanager
def scanner(scan: Callable) -> Iterator[None]:
    """framing's framer and decode_logplex1 using ``scan`` for the duration."""
    saved = framing.scan
    framing.scan = scan
    try:
        yield
    finally:
        framing.scan = saved


def framer_run(scan: Callable, data: bytes, points: list[int], max_frame: int) -> list:
    with scanner(scan):
        framer = framing.SyslogFramer(max_frame)
        seen = []
        start = 0
        for cut in [*points, len(data), len(data)]:
            seen.append(outcome(framer.feed, data[start:cut]))
            seen.append(framer.pending)
            start = cut
        return seen


def decode_run(scan: Callable, data: bytes, max_frame: int) -> tuple:
    with scanner(scan):
        return outcome(framing.decode_logplex1, data, max_frame)


# == the comparisons ==================================================================================
def check_framing(rng: random.Random, data: bytes) -> None:
    n = len(data)
    for max_frame in (65536, rng.randint(0, 64), rng.randint(0, 400)):
        for lines in (True, False):
            pos = rng.choice([0, 0, rng.randint(0, n + 2), -1])
            pure_out: list[bytes] = []
            hot_out: list[bytes] = []
            assert outcome(_hot.scan, data, pos, hot_out, max_frame, lines) == outcome(
                framing._scan, data, pos, pure_out, max_frame, lines)
            assert hot_out == pure_out
        points = cuts(rng, n)
        assert framer_run(_hot.scan, data, points, max_frame) == framer_run(
            framing._scan, data, points, max_frame)
        assert decode_run(_hot.scan, data, max_frame) == decode_run(framing._scan, data, max_frame)


def check_message(rng: random.Random, msg: bytes) -> None:
    parts = outcome(_hot.split_header, msg)
    assert parts == outcome(syslog.pure_split_header, msg)
    name = rng.choice([b"app-name", b"", b"\xc3\xa9", field(rng)])
    if parts[0] == "ok" and parts[1] is not None:
        assert outcome(_hot.cook, parts[1], name) == outcome(syslog.pure_cook, parts[1], name)
    assert outcome(_hot.plain, msg) == outcome(drain_formats._plain, msg)
    assert outcome(_hot.output_line, msg) == outcome(drain_formats.pure_output_line, msg)


def full_rules(routes: dict, route: tuple | None) -> Callable[[bytes], tuple | None]:
    """An odd(message) for group that applies the whole rule to any message, as the router's does
    (the compiled loop hands it some messages the pure one routes itself): an RFC 5424 header
    routes by its token, an RFC 3164-looking line (it starts with "<") goes to channel "old",
    the rest is dropped."""
    def odd(message):
        parts = syslog.pure_split_header(message)
        if parts is None:
            return ("old", message) if message[:1] == b"<" else None
        target = route if route is not None else routes.get(parts[3])
        return None if target is None else (target[0], syslog.pure_cook(parts, target[1]))
    return odd


def check_group(rng: random.Random, messages: list[bytes]) -> None:
    """The router's loop: the same channels, in the same order, with the same cooked messages."""
    tokens = [parts[3] for parts in map(syslog.pure_split_header, messages) if parts is not None]
    routes = {token: (rng.choice(["a", "b", "c"]), rng.choice([b"app", b"", b"x" * 40]))
              for token in tokens + [b"t.abc", b"host"] if rng.random() < 0.7}
    # Runs of one token, as one sender's read has them; the last-token cache must not stick.
    batch = [m for m in messages for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        rng.shuffle(batch)
    for route in (None, None, ("r", rng.choice([b"named", b""]))):
        odd = full_rules(routes, route)
        assert outcome(_hot.group, batch, routes, route, odd) == outcome(
            router.pure_group, batch, routes, route, odd)


def check_batch(rng: random.Random, messages: list[bytes]) -> None:
    check_group(rng, messages)
    total = sum(map(len, messages))
    for max_bytes in (0, rng.randint(0, total + 2), total, total + 1):
        for told in (total, total + rng.randint(-5, 5)):  # a drain queue's own count, or one off
            for at_least_one in (True, False):
                assert outcome(_hot.fitting, messages, max_bytes, told, at_least_one) == outcome(
                    drain_queue.pure_fitting, messages, max_bytes, told, at_least_one)
    assert outcome(_hot.http_body, messages) == outcome(drain_formats.pure_http_body, messages)
    assert outcome(_hot.http_body, iter(messages)) == outcome(drain_formats.pure_http_body, messages)
    token = rng.choice([b"d.1234", b"", b"x" * 50])
    assert outcome(_hot.syslog_frames, messages, token) == outcome(drain_formats.pure_syslog_frames, messages, token)


PROTOCOL = connection._Protocol()


def check_resp(rng: random.Random, messages: list[bytes]) -> None:
    args = [rng.choice([b"LPUSH", "LTRIM", b"key:\xff", 0, -1, 12345678901234, 1.5, "caf\u00e9", b""])
            for _ in range(rng.randint(0, 4))] + messages
    rng.shuffle(args)
    pure = outcome(connection._pure_build_command, PROTOCOL, *args)
    assert outcome(_hot.build_command, tuple(args), PROTOCOL._encode_value) == pure


def check_backlog(rng: random.Random, messages: list[bytes]) -> None:
    """The backlog writer's queue and its script calls: the same queue, counts and calls."""
    channels = [rng.choice(["a", "b", "c\u00e9", "d" * 30]) for _ in messages]
    history = rng.choice([1, 2, 3, 1000])
    pending = {name: [rng.choice(messages or [b"old"])] * rng.randint(0, 4) for name in ("b", "z") if rng.random() < 0.5}
    queues = [{name: lines[:] for name, lines in pending.items()} for _ in range(2)]
    for _ in range(rng.randint(1, 3)):
        read: dict[str, list[bytes]] = {}
        for channel, message in zip(channels, messages):
            if rng.random() < 0.6:
                read.setdefault(channel, []).append(message)
        results = [outcome(function, queue, read, history)
                   for function, queue in zip((_hot.enqueue, backlog_writer.pure_enqueue), queues)]
        assert results[0] == results[1]
        assert queues[0] == queues[1] and list(queues[0]) == list(queues[1])  # the order _shed cuts in
    head = (b"%d" % (history - 1), b"604800")
    fresh = {name for name in ("a", "b") if rng.random() < 0.5}
    total = sum(map(len, messages))
    for max_bytes in (0, 1, rng.randint(0, total + 2), total + 1):
        assert outcome(_hot.write_calls, b"lp:log:", queues[0], head, fresh, max_bytes) == outcome(
            backlog_writer.pure_write_calls, b"lp:log:", queues[0], head, fresh, max_bytes)


def check_tail(rng: random.Random, messages: list[bytes]) -> None:
    """A text tail's lines: the same lines, in the same order, under every kind of filter."""
    batch = messages + [m + rng.choice([b"\n", b"\\", b"\t", b"\x7f", b"\x1b[31m"]) for m in messages]
    ps = rng.choice([None, "web", "web.1", "we", "-", "t.abc", "x" * 20])
    source = rng.choice([None, "app", "host", "-", "t.abc"])
    tail = tail_session.TailFilter(ps, source)
    assert outcome(_hot.tail_lines, batch, tail.ps, tail.source, tail.one) == outcome(
        tail_session.pure_tail_lines, batch, tail.one)


def check_everything(seed: int) -> None:
    rng = random.Random(seed)
    data, messages = stream(rng)
    check_framing(rng, data)
    for msg in messages:
        check_message(rng, msg)
    check_batch(rng, messages)
    check_backlog(rng, messages)
    check_resp(rng, messages)
    check_tail(rng, messages)


@HOT
@given(st.integers(min_value=0, max_value=2**64))
def test_twins_agree_on_generated_streams(seed: int) -> None:
    """Frames, messages, drain bodies and RESP commands made by a seeded PRNG: same results, same errors."""
    check_everything(seed)


@HOT
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2**32))
def test_twins_agree_on_raw_bytes(data: bytes, seed: int) -> None:
    """Arbitrary bytes as a stream, as one message and as lines: same results, same errors."""
    rng = random.Random(seed)
    check_framing(rng, data)
    check_message(rng, data)
    lines = data.split(b"\n")
    for line in lines:
        check_message(rng, line)
    check_batch(rng, lines)
    check_backlog(rng, lines)
    check_tail(rng, lines)


@pytest.mark.parametrize("data", [
    b"10 <13>1 x y",                    # a complete count whose frame is not: incomplete
    b"99999999999 x",                   # 11 digits
    b"9999999999 x",                    # 10 digits, more than the limit
    b"12x rest",                        # not a number
    b"5 hello-5 world",                 # a message then a non-digit frame start
    b"0 0 0 \n\n5 hello",               # empty frames and strays
    b"3 \r\n\x00",                      # a frame of trailers only: dropped
    b"<13>1 line without an end",       # a line frame still open
    b"x" * 100 + b"\n",                  # a line longer than the limit below
])
def test_twins_agree_on_framing_edges(data: bytes) -> None:
    """The edges the compiled scanner hands back to framing._scan: the same answer or error."""
    for max_frame in (65536, 50):
        for lines in (True, False):
            pure_out: list[bytes] = []
            hot_out: list[bytes] = []
            assert outcome(_hot.scan, data, 0, hot_out, max_frame, lines) == outcome(
                framing._scan, data, 0, pure_out, max_frame, lines)
            assert hot_out == pure_out


def test_twins_agree_on_non_bytes() -> None:
    """Input that is not bytes goes to the pure function: the same answer or error."""
    for value in (bytearray(b"<13>1 a b c d e f"), memoryview(b"1 x"), "<13>1 a b c d e f", None):
        assert outcome(_hot.split_header, value) == outcome(syslog.pure_split_header, value)
        assert outcome(_hot.scan, value, 0, [], 100, True) == outcome(framing._scan, value, 0, [], 100, True)
    routes = {b"a": ("c", b"n")}
    odd = full_rules(routes, None)
    line = b"<13>1 t h a p m - x"
    assert outcome(_hot.group, iter([line, line]), routes, None, odd) == outcome(
        router.pure_group, [line, line], routes, None, odd)
    tail = tail_session.TailFilter("p", "a")
    for odd_messages in ([line, bytearray(line)], (line, "text")):
        assert outcome(_hot.tail_lines, odd_messages, tail.ps, tail.source, tail.one) == outcome(
            tail_session.pure_tail_lines, odd_messages, tail.one)
    assert outcome(_hot.tail_lines, iter([line]), tail.ps, tail.source, tail.one) == ("ok", [b"t a[p]: x\n"])
    for odd_messages in ((), [b"x", "y"], (b"x", b"y"), [b"ab", bytearray(b"cd")]):
        assert outcome(_hot.fitting, odd_messages, 1, 4) == outcome(drain_queue.pure_fitting, odd_messages, 1, 4)
    for value in (bytearray(line), "<13>1 t h a p m - x", None):
        assert outcome(_hot.group, [line, value], routes, None, odd) == outcome(
            router.pure_group, [line, value], routes, None, odd)
    for pending, read in (({}, {"a": (b"x",)}), ({"a": (b"x",)}, {"a": [b"y"]}), ({}, [("a", [b"x"])]),
                          ({}, {"a": [b"x", bytearray(b"yz")]}), ({"a": [b"x"]}, {"a": [b"y", "z"]})):
        queues = [{k: list(v) if isinstance(v, list) else v for k, v in pending.items()} for _ in range(2)]
        assert outcome(_hot.enqueue, queues[0], read, 1) == outcome(backlog_writer.pure_enqueue, queues[1], read, 1)
        assert queues[0] == queues[1]
    for batch in ({"a": (b"x",)}, {"a": [b"x", bytearray(b"y")]}, {1: [b"x"]}, [("a", [b"x"])], {"a": ["x"]}):
        assert outcome(_hot.write_calls, b"p:", batch, (b"0", b"1"), (), 10) == outcome(
            backlog_writer.pure_write_calls, b"p:", batch, (b"0", b"1"), (), 10)
    parts = [b"<13>1", b"t", b"h", b"a", b"p", b"m", b"- x"]
    for odd_parts, name in ((tuple(parts), b"n"), (parts, "n"), (parts[:6], b"n"), (parts + [b"z"], b"n"),
                            ([*parts[:2], 5, *parts[3:]], b"n")):
        assert outcome(_hot.cook, odd_parts, name) == outcome(syslog.pure_cook, odd_parts, name)
