"""What a drain puts on the wire: logplex's output lines, HTTP bodies, syslog frames, the L10 notice, and spool chunks.

Pure functions of bytes (no Twisted): the compiled logplex._hot has twins of
the per-message ones, bound here in their place when it is built.
"""

from __future__ import annotations

from typing import Iterable

from logplex import hotpath, syslog
from logplex.framing import decode_logplex1, encode_logplex1

# Spool chunks hold whole batches; they never meet the syslog frame limit.
_CHUNK_MAX_FRAME = 1 << 30


def l10_message(lost: int, since: float, now: float) -> bytes:
    """logplex's notice of messages a drain lost, from heroku/logplex, local5.warning."""
    text = b"Error L10 (output buffer overflow): %d messages dropped since %s." % (
        lost, syslog.utc_timestamp(since))
    return syslog.make_message(
        syslog.FACILITY_LOCAL5, syslog.SEVERITY_WARNING, syslog.utc_timestamp(now),
        b"heroku", b"logplex", text,
    )


# -- wire formats -----------------------------------------------------------------------
# Cooked messages passed split_header at ingest, so the common case (no
# STRUCTURED-DATA) needs one split and one format per message; anything else
# goes through the full parser.

_BOM = b"\xef\xbb\xbf"


def _plain(message: bytes) -> tuple[list[bytes], bytes] | None:
    """(header parts, MSG) when the message has no structured data, else None."""
    parts = message.split(b" ", 6)
    if len(parts) != 7 or parts[0][1:2] == b"0" and parts[0] != b"<0>1":
        return None  # a zero-padded PRI is normalised by the full parser
    rest = parts[6]
    if rest[:2] == b"- ":
        msg = rest[2:]
    elif rest == b"-":
        msg = b""
    else:
        return None
    if msg[:3] == _BOM:
        msg = msg[3:]
    return parts, msg


def output_line(message: bytes) -> bytes | None:
    """logplex's output format: `<PRI>1 TS host APPNAME PROCID - MSG`."""
    plain = _plain(message)
    if plain is not None:
        parts, msg = plain
        return b"%s %s host %s %s - %s" % (parts[0], parts[1], parts[3], parts[4], msg)
    fields = syslog.parse(message)
    return syslog.output_message(fields) if fields is not None else None


def http_body(messages: Iterable[bytes]) -> tuple[bytes, int]:
    """An application/logplex-1 body in logplex's output format, and its message count."""
    out = []
    append = out.append
    for message in messages:
        line = output_line(message)
        if line is not None:
            append(b"%d %s\n" % (len(line) + 1, line))
    return b"".join(out), len(out)


def syslog_frames(messages: Iterable[bytes], drain_token: bytes) -> bytes:
    """Octet-counted frames as logplex's syslog drains send them: the drain token as HOSTNAME."""
    out = []
    append = out.append
    for message in messages:
        plain = _plain(message)
        if plain is not None:
            parts, msg = plain
            pri, ts, app, procid = parts[0], parts[1], parts[3], parts[4]
        else:
            fields = syslog.parse(message)
            if fields is None:
                continue
            pri, ts, app, procid, msg = (b"<%d>1" % fields.pri, fields.timestamp, fields.appname,
                                         fields.procid, fields.msg)
        line = b"%s %s %s %s %s - - %s\n" % (pri, ts, drain_token, app, procid, msg)
        append(b"%d %s" % (len(line), line))
    return b"".join(out)


# The pure functions keep their names with pure_ (the differential test and
# LOGPLEX_PURE_PYTHON use them); the compiled twins take the plain names.
# They hand anything unusual (structured data, RFC 3164) back to syslog.parse.
pure_output_line, pure_http_body, pure_syslog_frames = output_line, http_body, syslog_frames
if (_hot := hotpath.compiled()) is not None:
    output_line, http_body, syslog_frames = _hot.output_line, _hot.http_body, _hot.syslog_frames


# -- spool chunks -------------------------------------------------------------------------

def encode_chunk(batch_messages: list[bytes], frame_id: str, created: float) -> bytes:
    """A spool entry: b"1 <frame id> <count> <created>\\n" then the messages, octet-counted."""
    head = b"1 %s %d %.3f\n" % (frame_id.encode(), len(batch_messages), created)
    return head + encode_logplex1(batch_messages)


def decode_chunk(chunk: bytes) -> tuple[str, list[bytes], float]:
    head, _, body = chunk.partition(b"\n")
    _, frame_id, _count, created = head.split(b" ")
    return frame_id.decode(), decode_logplex1(body, _CHUNK_MAX_FRAME), float(created)
