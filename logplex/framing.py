"""Splitting syslog byte streams and logplex-1 bodies into messages, and framing messages to send."""

from __future__ import annotations

from collections.abc import Iterable

from logplex import hotpath

DEFAULT_MAX_FRAME = 65536

# Longer counts cannot be a length we accept; the limit bounds how much of a
# "count" is read (or buffered) before giving up on it.
_MAX_COUNT_DIGITS = 10

_SP = b" "
_LF = b"\n"
_CR = b"\r"
_NUL = b"\x00"
# Bytes a sender may leave between frames (an LF after an octet-counted
# frame, CRLF line ends, NUL terminators); never part of a message.
_STRAY = frozenset(b"\n\r\x00")
# Every trailer byte (NUL, LF, CR) is <= this, so a message whose last byte
# is larger has nothing to strip.
_HIGHEST_TRAILER = 13


class FramingError(ValueError):
    """The byte stream cannot be framed; the connection must be closed.

    ``messages`` holds the complete messages found before the error in the
    same ``feed``, so a caller may still deliver them before closing.
    """

    def __init__(self, reason: str, messages: list[bytes] | None = None) -> None:
        super().__init__(reason)
        self.messages: list[bytes] = messages if messages is not None else []


def _strip(message: bytes) -> bytes:
    # log-shuttle counts its trailing LF; others end lines in CRLF or NUL.
    message = message.rstrip(_NUL)
    if message.endswith(_LF):
        message = message[:-1]
    if message.endswith(_CR):
        message = message[:-1]
    return message


def _bad_count(field: bytes) -> FramingError:
    if len(field) > _MAX_COUNT_DIGITS and field[: _MAX_COUNT_DIGITS + 1].isdigit():
        return FramingError(
            f"octet count {field[:_MAX_COUNT_DIGITS + 1]!r}... has more than "
            f"{_MAX_COUNT_DIGITS} digits; frames must start with 'LENGTH SP'."
        )
    return FramingError(
        f"octet count {field[:_MAX_COUNT_DIGITS + 1]!r} is not a number; "
        "frames must start with 'LENGTH SP'."
    )


def _too_long(length: int, max_frame: int) -> FramingError:
    return FramingError(f"frame of {length} bytes exceeds the {max_frame}-byte maximum.")


def _not_counted(data: bytes, pos: int) -> FramingError:
    return FramingError(
        f"byte {pos} starts {data[pos:pos + 20]!r}, not an octet count; an "
        "application/logplex-1 body is 'LENGTH SP MESSAGE' frames back to back."
    )


def _scan(data: bytes, pos: int, out: list[bytes], max_frame: int, lines: bool) -> int:
    """Append the messages of the complete frames in ``data[pos:]`` to ``out``.

    Returns where the first incomplete frame starts (``len(data)`` when there
    is none). Frames not starting with a digit are LF-terminated when
    ``lines``, else an error. Raises FramingError on a bad or oversized count
    and on a line frame already longer than ``max_frame``.
    """
    # This loop is the per-message cost of ingest: bytes methods and one
    # slice per frame, no per-frame calls into Python code on the usual path.
    append = out.append
    find = data.find
    n = len(data)
    while pos < n:
        c = data[pos]
        if 48 <= c <= 57:
            sp = find(_SP, pos, pos + _MAX_COUNT_DIGITS + 1)
            if sp < 0:
                field = data[pos : pos + _MAX_COUNT_DIGITS + 1]
                if len(field) > _MAX_COUNT_DIGITS or not field.isdigit():
                    raise _bad_count(field)
                return pos
            field = data[pos:sp]
            if not field.isdigit():
                raise _bad_count(field)
            length = int(field)
            if length > max_frame:
                raise _too_long(length, max_frame)
            start = sp + 1
            end = start + length
            if end > n:
                return pos
            if length:
                last = data[end - 1]
                if last > _HIGHEST_TRAILER:
                    append(data[start:end])
                elif last == 10 and length > 1 and data[end - 2] > _HIGHEST_TRAILER:
                    # log-shuttle's and syslog drains' counted LF.
                    append(data[start : end - 1])
                else:
                    message = _strip(data[start:end])
                    if message:
                        append(message)
            pos = end
        elif c in _STRAY:
            pos += 1
        elif not lines:
            raise _not_counted(data, pos)
        else:
            lf = find(_LF, pos)
            if lf < 0:
                if n - pos > max_frame:
                    raise _too_long(n - pos, max_frame)
                return pos
            if lf - pos > max_frame:
                raise _too_long(lf - pos, max_frame)
            if data[lf - 1] > _HIGHEST_TRAILER:
                append(data[pos:lf])
            else:
                message = _strip(data[pos:lf])
                if message:
                    append(message)
            pos = lf + 1
    return n


# The scanner the framer and decode_logplex1 use: _scan, or its compiled twin
# (logplex/_hot.pyx), which frames the common case itself and hands every
# unusual frame to _scan and every trailer to _strip, so the rules stay here.
scan = _scan
_hot = hotpath.compiled()
if _hot is not None:
    _hot.bind_framing(_scan, _strip)
    scan = _hot.scan


# What the bytes at the start of the next feed belong to.
_BETWEEN = 0  # a frame boundary, perhaps after some digits of a count
_COUNTED = 1  # the body of an octet-counted frame
_LINE = 2  # a non-transparent (LF-terminated) frame


class SyslogFramer:
    """Splits a TCP syslog byte stream into messages (RFC 6587).

    Each frame is octet-counted when it starts with a digit, else
    LF-terminated, so senders of either kind (or both) are understood.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._state = _BETWEEN
        # Digits of a count whose SP has not arrived yet.
        self._head = b""
        # Pieces of the frame in progress, joined once it completes, so a big
        # frame arriving in small reads is copied once rather than per read.
        self._parts: list[bytes] = []
        self._held = 0
        # The `LEN SP` of the octet-counted frame in progress: part of it, so
        # a frame cut right after its count is still an incomplete frame.
        self._prefix = 0
        # Bytes still missing from the octet-counted frame in progress.
        self._need = 0
        self._error: str | None = None

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete frame, its count included (0 when between frames)."""
        if self._state == _BETWEEN:
            return len(self._head)
        return self._prefix + self._held

    def feed(self, data: bytes) -> list[bytes]:
        """Every message completed by ``data``, in order, without framing.

        Raises FramingError when the stream cannot be framed; the framer then
        refuses any further data.
        """
        if self._error is not None:
            raise FramingError(self._error)
        out: list[bytes] = []
        try:
            self._feed(data, out)
        except FramingError as e:
            self._error = str(e)
            self._state = _BETWEEN
            self._parts = []
            self._head = b""
            e.messages = out
            raise
        return out

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        pos = 0
        if self._state == _COUNTED:
            pos = self._continue_counted(data, out)
            if pos < 0:
                return
        elif self._state == _LINE:
            pos = self._continue_line(data, out)
            if pos < 0:
                return
        elif self._head:
            # At most ten bytes, and only when a read split a count.
            data = self._head + data
            self._head = b""
        stop = scan(data, pos, out, self._max_frame, True)
        if stop < len(data):
            self._hold(data, stop)

    def _continue_counted(self, data: bytes, out: list[bytes]) -> int:
        need = self._need
        if len(data) < need:
            self._parts.append(data)
            self._held += len(data)
            self._need = need - len(data)
            return -1
        self._complete(data[:need], out)
        return need

    def _continue_line(self, data: bytes, out: list[bytes]) -> int:
        lf = data.find(_LF)
        if lf < 0:
            self._held += len(data)
            if self._held > self._max_frame:
                raise _too_long(self._held, self._max_frame)
            self._parts.append(data)
            return -1
        if self._held + lf > self._max_frame:
            raise _too_long(self._held + lf, self._max_frame)
        self._complete(data[:lf], out)
        return lf + 1

    def _complete(self, last: bytes, out: list[bytes]) -> None:
        """A frame held across reads is whole with `last`: join it once."""
        self._parts.append(last)
        message = b"".join(self._parts)
        self._reset()
        if message and message[-1] <= _HIGHEST_TRAILER:
            message = _strip(message)
        if message:
            out.append(message)

    def _hold(self, data: bytes, pos: int) -> None:
        """Keep the incomplete frame starting at ``data[pos]`` for the next feed."""
        if data[pos] > 57 or data[pos] < 48:
            self._state = _LINE
            self._parts = [data[pos:]]
            self._held = len(data) - pos
            return
        sp = data.find(_SP, pos)
        if sp < 0:
            self._head = data[pos:]
            return
        body = data[sp + 1 :]
        self._state = _COUNTED
        self._prefix = sp + 1 - pos
        self._parts = [body]
        self._held = len(body)
        self._need = int(data[pos:sp]) - len(body)

    def _reset(self) -> None:
        self._state = _BETWEEN
        self._parts = []
        self._held = 0
        self._prefix = 0
        self._need = 0


def decode_logplex1(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> list[bytes]:
    """Frames of an application/logplex-1 HTTP body: octet-counted only.

    Messages are stripped of trailers as by SyslogFramer, and frames left
    empty are dropped. Raises FramingError unless the whole body is frames.
    """
    out: list[bytes] = []
    stop = scan(body, 0, out, max_frame, False)
    if stop < len(body):
        sp = body.find(_SP, stop)
        if sp < 0:
            raise FramingError(
                f"the body ends inside the octet count {body[stop:]!r}; it was truncated."
            )
        raise FramingError(
            f"the last frame announces {int(body[stop:sp])} bytes but the body has "
            f"only {len(body) - sp - 1} left; it was truncated."
        )
    return out


def octet_frame(message: bytes) -> bytes:
    """One octet-counted frame of message + LF, as syslog drains send: b'LEN MSG\\n'."""
    return b"%d %s\n" % (len(message) + 1, message)


def encode_logplex1(messages: Iterable[bytes]) -> bytes:
    """An application/logplex-1 body: each message octet-counted with a trailing LF inside the count."""
    return b"".join([b"%d %s\n" % (len(m) + 1, m) for m in messages])
