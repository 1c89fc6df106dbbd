"""logplex.drains.formats: output lines, HTTP bodies, syslog frames and spool chunks."""

from hypothesis import given, strategies as st

from logplex.drains.formats import decode_chunk, encode_chunk, http_body, syslog_frames
from logplex.framing import decode_logplex1

COOKED = b"<13>1 2026-11-24T10:00:00+00:00 myhost app web.1 - [x@1 a=\"b\"] hello"


def test_http_body_is_logplex_output_format():
    body, count = http_body([COOKED, COOKED.replace(b"hello", b"again")])
    assert count == 2
    assert decode_logplex1(body) == [
        b"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - hello",
        b"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - again",
    ]
    first = b"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - hello\n"
    assert body.startswith(b"%d %s" % (len(first), first))


def test_syslog_frames_carry_the_drain_token_as_hostname():
    line = b"<13>1 2026-11-24T10:00:00+00:00 d.abc app web.1 - - hello\n"
    assert syslog_frames([COOKED], b"d.abc") == b"%d %s" % (len(line), line)


@given(st.lists(st.binary(max_size=300), max_size=50), st.text(alphabet="0123456789abcdef", min_size=1, max_size=32))
def test_spool_chunks_round_trip(messages, frame_id):
    messages = [m for m in messages if m and not m.endswith((b"\n", b"\r", b"\0"))]
    assert decode_chunk(encode_chunk(messages, frame_id, 12.5)) == (frame_id, messages, 12.5)


MESSAGES = [
    COOKED,
    b"<13>1 2026-11-24T10:00:00+00:00 h app web.1 - - plain",
    b"<13>1 2026-11-24T10:00:00+00:00 h app web.1 - -",
    b"<13>1 2026-11-24T10:00:00+00:00 h app web.1 - - \xef\xbb\xbfwith a BOM",
    b"<013>1 2026-11-24T10:00:00+00:00 h app web.1 - - zero-padded PRI",
    b'<13>1 2026-11-24T10:00:00+00:00 h app web.1 ID [a@1 x="y z"] with SD',
]


def test_the_fast_output_path_gives_exactly_what_the_full_parser_gives():
    from logplex import syslog

    expected = []
    for m in MESSAGES:
        f = syslog.parse(m)
        line = syslog.output_message(f)
        expected.append(b"%d %s\n" % (len(line) + 1, line))
    assert http_body(MESSAGES) == (b"".join(expected), len(MESSAGES))
    for m in MESSAGES:
        f = syslog.parse(m)
        line = b"<%d>1 %s d.t %s %s - - %s\n" % (f.pri, f.timestamp, f.appname, f.procid, f.msg)
        assert syslog_frames([m], b"d.t") == b"%d %s" % (len(line), line)


def test_the_queue_and_formats_load_no_redis_client_and_no_reactor():
    import os
    import subprocess
    import sys

    probe = ("import sys, logplex.drains.queue, logplex.drains.formats, logplex.drains.policy; "
             "print(sorted(m for m in sys.modules if m == 'txredisapi' or m == 'twisted.internet.reactor'))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "[]"
