"""The answer to one HTTP/1.1 POST, parsed from bytes as they arrive: sans-IO, bounded, for endpoints the node does not trust.

AnswerParser is fed what a connection reads and returns an Answer once the
answer is whole (or cut); it says whether the connection may carry the next
request. It parses only what a drain needs, the answer to a POST (never to a
HEAD), and keeps little of it:

- at most `wire_limit` bytes (ANSWER_WIRE_BYTES) of status lines, headers and
  chunk framing, 1xx interim answers included: past them, AnswerTooLong;
- at most `body_limit` bytes (ANSWER_BYTES) of body: at the first byte past
  them the answer ends, `cut`, and the connection is never reused nor read on.

Framing is RFC 9112's, read as a client: no body for 204 and 304; else a
Transfer-Encoding ending in chunked (chunk extensions ignored, trailers read
and thrown away), a Content-Length (repeated only with one value), or the body
runs to the close. 1xx answers are skipped (101 is an error: no upgrade is
asked for). Lines may end in a bare LF (a CR before the LF is dropped; a CR
anywhere else is an error); an obs-fold line is joined to the header before it
with a space, as RFC 9112 tells a user agent to. Anything else out of shape (a
status line that is not HTTP/1.x and three digits, a header line without a
colon or with a name that is not a token, conflicting Content-Lengths, a bad
chunk size or chunk end) is MalformedAnswer: the parser's only exceptions are
AnswerError's, whatever it is fed.

Bodies are kept as sent: nothing is decoded (no gzip), and nothing here
follows a Location or keeps a Set-Cookie.
"""

from __future__ import annotations

import re

import attrs

# What is kept of an answer's body: enough for a receiver's error sentence.
ANSWER_BYTES = 4096
# What of it (or of a Location) goes into a drain's last_error.
EXCERPT_CHARS = 200
# All an answer may take on the wire besides its kept body: status lines,
# headers, chunk framing and trailers.
ANSWER_WIRE_BYTES = 64 * 1024

_UNPRINTABLE = re.compile(r"[^ -~]+")
_FOLD = re.compile(rb"\r?\n[ \t]+")
_HEAD_END = re.compile(rb"\n\r?\n")
_STATUS = re.compile(rb"HTTP/1\.([0-9]) ([1-9][0-9]{2})(?:[ \t][^\r\x00]*)?")
# A header line "name: value" (the value without its leading blanks); anything else is
# looked at again, slowly, to name the error. The value starts at its first
# non-blank, so a hostile line of blanks has one way to match, not n (no
# quadratic backtracking; possessive quantifiers would need Python 3.11).
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[^ \t\r\x00][^\r\x00]*)?)\r?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\x00]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")

_HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _TO_CLOSE, _DONE, _FAILED = range(9)


class AnswerError(Exception):
    """An answer the node cannot read as HTTP/1.1: its connection is dropped."""


class MalformedAnswer(AnswerError):
    """An answer out of HTTP/1.1's shape (the message says where)."""

    def __str__(self) -> str:
        return f"an answer that is not HTTP/1.1 ({self.args[0]}): the connection was dropped"


class AnswerTooLong(AnswerError):
    """An answer whose status line, headers and framing ran past ANSWER_WIRE_BYTES."""


@attrs.frozen
class Answer:
    """What a drain endpoint answered: its status, headers and the first ANSWER_BYTES of its body."""

    code: int
    # Lower-case names, each with its values in the order they came.
    headers: dict[bytes, list[bytes]]
    body: bytes
    cut: bool = False  # the body went on past what was kept, or broke off

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def excerpt(self) -> str:
        """The start of the body as one line of printable text, "" if it is empty or encoded."""
        if (self.header(b"content-encoding") or b"identity").strip().lower() != b"identity":
            return ""
        if any(coding != b"chunked" for coding in _tokens(self.headers.get(b"transfer-encoding"))):
            return ""
        return printable(self.body.decode("utf-8", "replace"))


def printable(text: str, limit: int = EXCERPT_CHARS) -> str:
    """text as one short line of printable ASCII: what an endpoint says, fit for last_error."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _tokens(values: list[bytes] | None) -> list[bytes]:
    if not values:
        return []
    return [t.strip(b" \t").lower() for v in values or () for t in v.split(b",") if t.strip(b" \t")]


class AnswerParser:
    """Reads one answer from the bytes of a connection, as they come; a new parser for each request."""

    def __init__(self, wire_limit: int = ANSWER_WIRE_BYTES, body_limit: int = ANSWER_BYTES) -> None:
        self.wire_limit = wire_limit
        self.body_limit = body_limit
        self.code = 0  # the final status, once its head is read
        self.headers: dict[bytes, list[bytes]] = {}
        self.reusable = False  # once whole: whether the connection may carry another request
        self.answer: Answer | None = None
        self._state = _HEAD
        self._buf = b""
        self._scanned = 0  # of _buf, searched already for the end of a head or line
        self._framing = 0  # wire bytes of this answer that are not body
        self._body: list[bytes] = []
        self._kept = 0
        self._left = 0  # of a Content-Length body or of a chunk
        self._keep_alive = False
        self._error: AnswerError | None = None

    @property
    def started(self) -> bool:
        """Whether any byte of an answer was read."""
        return bool(self._framing or self._buf)

    def feed(self, data: bytes) -> Answer | None:
        """The Answer, once `data` makes it whole; None while more is needed. Raises AnswerError."""
        if self._state == _DONE:
            if data:
                self.reusable = False  # bytes nobody asked for: the connection is out of step
            return None
        if self._error is not None:
            raise self._error
        buf = self._buf + data if self._buf else data
        try:
            return self._parse(buf)
        except AnswerError as e:
            self._state, self._error, self._buf = _FAILED, e, b""
            raise

    def eof(self) -> Answer | None:
        """The connection closed: the Answer it ends (cut if its body broke off), None if it had none."""
        state = self._state
        if state in (_HEAD, _DONE, _FAILED):
            return None
        # A body that broke off after the status line still leaves the status:
        # what the endpoint made of the batch.
        return self._finish(state != _TO_CLOSE and state != _TRAILER, False)

    def _too_long(self) -> AnswerTooLong:
        return AnswerTooLong(
            f"an answer of more than {self.wire_limit // 1024} KiB of status line, headers and framing "
            f"(besides the first {self.body_limit // 1024} KiB of body): the connection was dropped")

    def _parse(self, buf: bytes) -> Answer | None:
        pos, end = 0, len(buf)
        while True:
            state = self._state
            if state == _HEAD:
                found = _HEAD_END.search(buf, pos + max(0, self._scanned - 2))
                if found is None:
                    if self._framing + end - pos > self.wire_limit:
                        raise self._too_long()
                    self._buf, self._scanned = buf[pos:], end - pos
                    return None
                self._framing += found.end() - pos
                if self._framing > self.wire_limit:
                    raise self._too_long()
                head, pos, self._scanned = buf[pos:found.start()], found.end(), 0
                if self._head(head):
                    return self._finish(False, pos < end)
            elif state == _LENGTH or state == _CHUNK_DATA or state == _TO_CLOSE:
                n = end - pos if state == _TO_CLOSE else min(self._left, end - pos)
                if n == 0:
                    self._buf = b""
                    return None
                room = self.body_limit - self._kept
                if n > room:
                    self._body.append(buf[pos:pos + room])
                    return self._finish(True, False)
                self._body.append(buf[pos:pos + n])
                self._kept += n
                pos += n
                if state != _TO_CLOSE:
                    self._left -= n
                    if not self._left:
                        if state == _LENGTH:
                            return self._finish(False, pos < end)
                        self._state = _CHUNK_END
            else:  # a line of chunk framing or a trailer
                nl = buf.find(b"\n", pos + self._scanned)
                if nl < 0:
                    if self._framing + end - pos > self.wire_limit:
                        raise self._too_long()
                    self._buf, self._scanned = buf[pos:], end - pos
                    return None
                self._scanned = 0
                self._framing += nl + 1 - pos
                if self._framing > self.wire_limit:
                    raise self._too_long()
                line = buf[pos:nl - 1] if nl > pos and buf[nl - 1] == 13 else buf[pos:nl]
                pos = nl + 1
                if state == _CHUNK_SIZE_LINE:
                    size = _CHUNK_SIZE.fullmatch(line)
                    if size is None:
                        raise MalformedAnswer(f"a bad chunk size line: {line[:40]!r}")
                    self._left = int(size.group(1), 16)
                    self._state = _CHUNK_DATA if self._left else _TRAILER
                elif state == _CHUNK_END:
                    if line:
                        raise MalformedAnswer("a chunk longer than its size")
                    self._state = _CHUNK_SIZE_LINE
                elif not line:  # the blank line after the trailers
                    return self._finish(False, pos < end)

    def _head(self, head: bytes) -> bool:
        """Take in a head; True if it is a final answer's with no body (the answer is whole)."""
        status, _, fields = head.partition(b"\n")
        if status.endswith(b"\r"):
            status = status[:-1]
        match = _STATUS.fullmatch(status)
        if match is None:
            raise MalformedAnswer(f"not an HTTP/1.x status line: {status[:40]!r}")
        code = int(match.group(2))
        if fields[:1] in (b" ", b"\t"):
            raise MalformedAnswer("a folded line with no header before it")
        if b"\n " in fields or b"\n\t" in fields:
            fields = _FOLD.sub(b" ", fields)  # in one pass: joined one by one, folds cost quadratic time
        headers: dict[bytes, list[bytes]] = {}
        field = _FIELD.fullmatch
        for line in fields.split(b"\n") if fields else ():
            match_ = field(line)
            if match_ is None:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if b"\r" in line or b"\x00" in line:
                    raise MalformedAnswer("a CR or NUL inside a header line")
                name, colon, _ = line.partition(b":")
                if not colon:
                    raise MalformedAnswer(f"a header line without a colon: {line[:40]!r}")
                raise MalformedAnswer(f"a header name that is not a token: {name[:40]!r}")
            headers.setdefault(match_.group(1).lower(), []).append(match_.group(2).rstrip(b" \t"))
        if code < 200:
            if code == 101:
                raise MalformedAnswer("101 Switching Protocols, which a drain never asks for")
            return False  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.code, self.headers = code, headers
        connection = _tokens(headers.get(b"connection"))
        self._keep_alive = b"close" not in connection if match.group(1) != b"0" else b"keep-alive" in connection
        if code == 204 or code == 304:
            return True
        coding = _tokens(headers.get(b"transfer-encoding"))
        lengths = _tokens(headers.get(b"content-length"))
        if coding:
            if lengths:
                self._keep_alive = False  # both: read as chunked, but do not trust the connection after
            if coding[-1] == b"chunked":
                self._state = _CHUNK_SIZE_LINE
            else:
                self._state, self._keep_alive = _TO_CLOSE, False
        elif lengths:
            if any(_DIGITS.fullmatch(n) is None for n in lengths) or len(set(map(int, lengths))) != 1:
                raise MalformedAnswer(f"a bad or conflicting Content-Length: {b', '.join(lengths)[:40]!r}")
            self._left = int(lengths[0])
            if not self._left:
                return True
            self._state = _LENGTH
        else:
            self._state, self._keep_alive = _TO_CLOSE, False
        return False

    def _finish(self, cut: bool, more: bool) -> Answer:
        self._state = _DONE
        self._buf = b""
        self.reusable = self._keep_alive and not cut and not more
        self.answer = Answer(self.code, self.headers, b"".join(self._body), cut)
        return self.answer
