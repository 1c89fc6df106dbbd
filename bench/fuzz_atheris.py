"""Coverage-guided fuzzing of the framer and the syslog parser with atheris (libFuzzer).

Not part of CI: tests/test_fuzz.py is the fuzzing CI runs (hypothesis, a fixed
number of examples). This is for a long, open-ended search that follows the
branches it reaches; see bench/FUZZ.md.

    pip install atheris
    python bench/fuzz_atheris.py framer -runs=1000000 -max_len=4096
    python bench/fuzz_atheris.py parser -max_total_time=600 corpus/parser

Arguments after the target name go to libFuzzer (-runs, -max_total_time,
-max_len, -jobs/-workers, and corpus directories, which it reads and adds to).
A failure stops the run with the traceback and writes the input to
./crash-<sha1>; ``python bench/fuzz_atheris.py framer ./crash-<sha1>`` replays it.

Targets:

framer  SyslogFramer.feed over the input cut into reads at fuzzed points:
        only FramingError escapes, and after it every read is refused; no
        message is empty or longer than max_frame; the cuts change nothing;
        decode_logplex1 of the same bytes agrees or raises FramingError.
parser  split_header, parse, from_rfc3164, cook, output_line, http_body,
        syslog_frames and TailFilter on the input as one message: nothing
        raises; a parsed message's output line is output_message of its
        fields and splits back into them; drain bodies and frames decode back.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with atheris.instrument_imports(include=["logplex"]):
    from logplex import syslog
    from logplex.drains.formats import http_body, output_line, syslog_frames
    from logplex.framing import FramingError, SyslogFramer, decode_logplex1
    from logplex.tails.session import TailFilter

MAX_FRAMES = [8, 64, 1024, 65536]


def _frame(chunks: list[bytes], max_frame: int) -> tuple[list[bytes], bool]:
    framer = SyslogFramer(max_frame)
    out: list[bytes] = []
    for chunk in chunks:
        try:
            out.extend(framer.feed(chunk))
        except FramingError as e:
            out.extend(e.messages)
            for later in (b"", b"1 x\n"):
                try:
                    framer.feed(later)
                except FramingError as again:
                    assert again.messages == []
                else:
                    raise AssertionError("a broken framer took more data")
            return out, True
    return out, False


def framer_target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_frame = fdp.PickValueInList(MAX_FRAMES)
    cuts = [fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = sorted(min(c, len(stream)) for c in cuts)
    chunks, start = [], 0
    for cut in cuts + [len(stream)]:
        chunks.append(stream[start:cut])
        start = cut
    whole, whole_broke = _frame([stream], max_frame)
    split, split_broke = _frame(chunks, max_frame)
    assert (split, split_broke) == (whole, whole_broke), (stream, cuts)
    assert all(0 < len(m) <= max_frame for m in whole)
    try:
        body = decode_logplex1(stream, max_frame)
    except FramingError:
        return
    assert body == whole and not whole_broke


def parser_target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    now = float(fdp.ConsumeIntInRange(0, 2**33))
    ps = fdp.ConsumeUnicodeNoSurrogates(4) or None
    source = fdp.ConsumeUnicodeNoSurrogates(4) or None
    message = fdp.ConsumeBytes(fdp.remaining_bytes())

    parts = syslog.split_header(message)
    fields = syslog.parse(message)
    converted = syslog.from_rfc3164(message, now)
    if converted is not None:
        assert syslog.split_header(converted) is not None, converted
    if parts is not None:
        again = syslog.split_header(syslog.cook(parts, b"name"))
        assert again is not None and again[3] == b"name" and again[:3] + again[4:] == parts[:3] + parts[4:]
    line = output_line(message)
    if fields is not None:
        assert parts is not None
        assert line == syslog.output_message(fields)
        assert line.split(b" ", 6) == [b"<%d>1" % fields.pri, fields.timestamp, b"host", fields.appname,
                                       fields.procid, b"-", fields.msg]
        assert syslog.tail_line(fields).endswith(b"\n")
    body, count = http_body([message])
    assert count == (line is not None)
    if line is not None:
        expected = line[:-1] if line.endswith(b"\r") else line
        assert decode_logplex1(body, 1 << 30) == [expected]
    frames = SyslogFramer(1 << 30).feed(syslog_frames([message], b"d.token"))
    assert len(frames) == count
    if fields is not None:
        again = syslog.parse(frames[0])
        assert again is not None and again.hostname == b"d.token"
    for out in TailFilter(ps, source).lines([message]):
        assert out.endswith(b"\n")


TARGETS = {"framer": framer_target, "parser": parser_target}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(TARGETS)} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
