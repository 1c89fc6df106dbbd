"""logplex.drains.http1: answers parsed however they are split, bounded, and malformed ones refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from logplex.drains.http1 import (
    ANSWER_BYTES, ANSWER_WIRE_BYTES, Answer, AnswerError, AnswerParser, AnswerTooLong, MalformedAnswer,
)


def read(chunks: list[bytes], parser: AnswerParser | None = None) -> tuple[Answer | None, AnswerParser]:
    """Feed chunks as reads, then the close if no answer was whole; the answer and the parser."""
    parser = parser or AnswerParser()
    for chunk in chunks:
        answer = parser.feed(chunk)
        if answer is not None:
            return answer, parser
    return parser.eof(), parser


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


# -- a strategy of valid answers, with what they must parse to -------------------------------
_names = st.sampled_from([b"X-Thing", b"Retry-After", b"Location", b"Content-Encoding", b"Server", b"Set-Cookie"])
_values = st.binary(max_size=40).map(lambda v: bytes(b for b in v if 0x21 <= b <= 0x7e))


@st.composite
def answers(draw) -> tuple[bytes, int, bytes, bool, bool]:
    """(wire bytes, code, the body kept, cut, whether the connection may be reused)."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    wire = b""
    for _ in range(draw(st.integers(0, 2))):
        wire += b"HTTP/1.1 1%02d Interim%s%s" % (draw(st.sampled_from([0, 2, 3])), eol, eol)
    code = draw(st.sampled_from([200, 202, 204, 302, 400, 404, 429, 500, 503]))
    minor = draw(st.sampled_from([0, 1]))
    wire += b"HTTP/1.%d %d Reason phrase%s" % (minor, code, eol)
    for name, value in draw(st.lists(st.tuples(_names, _values), max_size=5)):
        wire += name + b": " + value + eol
    keep = minor == 1
    if draw(st.booleans()):
        wire += (b"Connection: close" if minor else b"Connection: keep-alive") + eol
        keep = not keep
    body = draw(st.binary(max_size=2 * ANSWER_BYTES)) if code != 204 else b""
    framing = "none" if code == 204 else draw(st.sampled_from(["length", "chunked", "close"]))
    if framing == "none":
        wire += eol
    elif framing == "length":
        wire += b"Content-Length: %d%s%s%s" % (len(body), eol, eol, body)
    elif framing == "chunked":
        wire += b"Transfer-Encoding: chunked" + eol + eol
        rest = body
        while rest:
            size = draw(st.integers(1, max(1, len(rest))))
            ext = draw(st.sampled_from([b"", b";a=b", b" ;x"]))
            wire += b"%x%s%s%s%s" % (size, ext, eol, rest[:size], eol)
            rest = rest[size:]
        wire += b"0" + eol + draw(st.sampled_from([b"", b"Trailer-Thing: 1" + eol])) + eol
    else:
        wire += eol + body
        keep = False
    cut = len(body) > ANSWER_BYTES
    return wire, code, body[:ANSWER_BYTES], cut, keep and not cut


@given(answer=answers(), cuts=st.lists(st.integers(0, 3 * ANSWER_BYTES + 2000)))
def test_any_split_of_a_valid_answer_reads_the_same(answer, cuts):
    wire, code, kept, cut, reusable = answer
    whole, parser = read([wire])
    assert (whole.code, whole.body, whole.cut, parser.reusable) == (code, kept, cut, reusable)
    pieces, parser = read(split(wire, cuts))
    assert pieces == whole
    assert parser.reusable == reusable


@given(body=st.binary(max_size=3 * ANSWER_BYTES), cuts=st.lists(st.integers(0, 3 * ANSWER_BYTES)))
def test_a_body_is_kept_to_the_limit_however_it_arrives(body, cuts):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer, parser = read(split(head + body, [c + len(head) for c in cuts]))
    assert answer.body == body[:ANSWER_BYTES]
    assert answer.cut == (len(body) > ANSWER_BYTES)
    assert parser.reusable == (not answer.cut)


@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000)))
def test_arbitrary_bytes_raise_nothing_but_the_parsers_error(data, cuts):
    parser = AnswerParser(wire_limit=1000, body_limit=100)
    try:
        for piece in split(data, cuts):
            parser.feed(piece)
            assert len(parser._buf) <= 1000
        answer = parser.eof()
    except AnswerError:
        return
    if answer is not None:
        assert len(answer.body) <= 100


@given(answer=answers(), at=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=8))
def test_a_valid_answer_mangled_anywhere_raises_nothing_else(answer, at, junk):
    wire = answer[0]
    at = at % (len(wire) + 1)
    try:
        read([wire[:at], junk, wire[at:]])
    except AnswerError:
        pass


# -- bounds -----------------------------------------------------------------------------------
@pytest.mark.parametrize("read_size", [1, 999, 70_000])
def test_endless_headers_are_cut_at_the_wire_bound(read_size):
    parser = AnswerParser()
    stream = b"HTTP/1.1 200 OK\r\n" + b"X-Junk: " + b"a" * 100 + b"\r\n"
    fed = 0
    with pytest.raises(AnswerTooLong, match="more than 64 KiB"):
        while True:
            chunk = (stream * (read_size // len(stream) + 1))[:read_size]
            parser.feed(chunk)
            fed += len(chunk)
            assert len(parser._buf) <= ANSWER_WIRE_BYTES
    assert fed <= ANSWER_WIRE_BYTES + read_size


def test_endless_interim_answers_and_chunk_framing_count_too():
    with pytest.raises(AnswerTooLong):
        AnswerParser().feed(b"HTTP/1.1 100 Continue\r\n\r\n" * 3000)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0;" + b"e" * 70_000
    with pytest.raises(AnswerTooLong):
        AnswerParser().feed(chunked)
    trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: x\r\n" * 12_000
    with pytest.raises(AnswerTooLong):
        AnswerParser().feed(trailers)


def test_a_cut_body_ends_the_answer_at_once_and_the_connection():
    parser = AnswerParser()
    answer = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 60_000)
    assert (answer.code, len(answer.body), answer.cut, parser.reusable) == (200, ANSWER_BYTES, True, False)
    assert parser.feed(b"more") is None  # read on, it is ignored


# -- framing ----------------------------------------------------------------------------------
def test_a_body_broken_off_leaves_the_status_cut():
    answer, parser = read([b"HTTP/1.1 503 Busy\r\nContent-Length: 10\r\n\r\nabc"])
    assert (answer.code, answer.body, answer.cut, parser.reusable) == (503, b"abc", True, False)
    answer, _ = read([b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"])
    assert (answer.body, answer.cut) == (b"ab", True)


def test_no_status_line_before_the_close_is_no_answer():
    assert read([b"HTTP/1.1 200 OK\r\nContent-Le"])[0] is None
    assert read([])[0] is None
    assert AnswerParser().started is False


def test_interim_answers_are_skipped_and_their_headers_forgotten():
    answer, parser = read([b"HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                           b"HTTP/1.1 204 No Content\r\n\r\n"])
    assert (answer.code, answer.headers, parser.reusable) == (204, {}, True)


def test_chunk_extensions_and_trailers_are_read_and_thrown_away():
    answer, parser = read([b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"4;name=value\r\nfail\r\n1 ; x\r\n!\r\n0\r\nExpires: never\r\n\r\n"])
    assert (answer.body, answer.cut, parser.reusable) == (b"fail!", False, True)
    assert b"expires" not in answer.headers


def test_bare_lf_lines_and_folded_headers_are_read():
    answer, _ = read([b"HTTP/1.1 302 Found\nLocation: http://a.example/\n  next\nContent-Length: 0\n\n"])
    assert answer.header(b"Location") == b"http://a.example/ next"


@pytest.mark.parametrize("wire, reusable", [
    (b"HTTP/1.1 204 OK\r\n\r\n", True),
    (b"HTTP/1.1 204 OK\r\nConnection: Keep-Alive, Close\r\n\r\n", False),
    (b"HTTP/1.0 204 OK\r\n\r\n", False),
    (b"HTTP/1.0 204 OK\r\nConnection: keep-alive\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", True),
    (b"HTTP/1.1 200 OK\r\n\r\nok", False),  # to the close
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", False),  # more than asked
    (b"HTTP/1.1 204 OK\r\n\r\n\r\n", False),
])
def test_whether_the_connection_may_carry_another_request(wire, reusable):
    answer, parser = read([wire])
    assert answer is not None and answer.code in (200, 204)
    assert parser.reusable == reusable


@pytest.mark.parametrize("wire, says", [
    (b"HTTP/2 200 OK\r\n\r\n", "status line"),
    (b"ICY 200 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "without a colon"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "not a token"),
    (b"HTTP/1.1 200 OK\r\n folded: first\r\n\r\n", "folded"),
    (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "CR or NUL"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokk\r\n", "longer than its size"),
])
def test_a_malformed_answer_is_the_parsers_error_and_stays_one(wire, says):
    parser = AnswerParser()
    with pytest.raises(MalformedAnswer, match=says):
        parser.feed(wire)
    with pytest.raises(MalformedAnswer):
        parser.feed(b"HTTP/1.1 204 OK\r\n\r\n")
    assert parser.eof() is None


def test_an_answer_keeps_its_headers_by_lower_case_name():
    answer, _ = read([b"HTTP/1.1 429 Slow down\r\nRetry-After: 30\r\nretry-after: 60\r\nContent-Length: 0\r\n\r\n"])
    assert answer.header(b"Retry-After") == b"30"
    assert answer.headers[b"retry-after"] == [b"30", b"60"]


@given(st.binary(max_size=200))
def test_an_excerpt_is_one_printable_line_unless_encoded(body):
    assume(body)
    plain = Answer(500, {}, body)
    assert plain.excerpt().isprintable() and len(plain.excerpt()) <= 203
    assert Answer(500, {b"content-encoding": [b"gzip"]}, body).excerpt() == ""
    assert Answer(500, {b"transfer-encoding": [b"gzip, chunked"]}, body).excerpt() == ""


@pytest.mark.parametrize("line", [b"X: a" + b" " * 60_000 + b"b", b"X:" + b" " * 60_000 + b"\x00",
                                  b"X" * 60_000 + b" : y", b"X: " + b"\t " * 30_000 + b"\r\r"])
def test_a_hostile_header_line_takes_linear_time(line):
    start = time.perf_counter()
    try:
        AnswerParser().feed(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")
    except AnswerError:
        pass
    assert time.perf_counter() - start < 1.0  # a backtracking match takes minutes


def test_many_folded_lines_take_linear_time():
    start = time.perf_counter()
    answer, _ = read([b"HTTP/1.1 200 OK\r\nX: a\r\n" + b"\tb\r\n" * 15_000 + b"Content-Length: 0\r\n\r\n"])
    assert answer.header(b"x") == b"a" + b" b" * 15_000
    assert time.perf_counter() - start < 1.0


def test_the_parser_is_sans_io():
    # No Twisted (nor any I/O) under it: the connection that feeds it is logplex.drains.httpclient's.
    code = "import sys, logplex.drains.http1; print(any(m.split('.')[0] == 'twisted' for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "False"
