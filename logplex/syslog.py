"""Reading, cooking and writing RFC 5424 syslog messages in logplex's formats."""

from __future__ import annotations

import datetime
import re

import attrs

from logplex import hotpath

FACILITY_KERN = 0
FACILITY_USER = 1
FACILITY_DAEMON = 3
FACILITY_LOCAL0 = 16
FACILITY_LOCAL1 = 17
FACILITY_LOCAL2 = 18
FACILITY_LOCAL3 = 19
FACILITY_LOCAL4 = 20
FACILITY_LOCAL5 = 21
FACILITY_LOCAL6 = 22
FACILITY_LOCAL7 = 23

SEVERITY_EMERGENCY = 0
SEVERITY_ALERT = 1
SEVERITY_CRITICAL = 2
SEVERITY_ERROR = 3
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
SEVERITY_INFO = 6
SEVERITY_DEBUG = 7

NILVALUE = b"-"
_SP = b" "
_BOM = b"\xef\xbb\xbf"
_EMPTY = b""
# Every valid b"<PRI>1" (PRI 0 to 191 in 1 to 3 digits, zero-padded or not):
# one set lookup checks the PRI and VERSION of a message at once.
_PRI_VERSIONS = frozenset(
    b"<%0*d>1" % (width, pri)
    for pri in range(192)
    for width in (1, 2, 3)
    if len(str(pri)) <= width
)
# RFC 5424's PRINTUSASCII (33-126), and with the SP between fields what a
# header may hold. The table maps those to SP and every other byte to NUL, so
# one C-level translate() and a memchr check all header fields at once on the
# hot path (faster than translate() deleting the allowed bytes).
_PRINTUSASCII = bytes(range(33, 127))
_HEADER_CHECK = bytes(32 if 32 <= c <= 126 else 0 for c in range(256))


def split_header(message: bytes) -> list[bytes] | None:
    """The RFC 5424 header fields of ``message``, or None when it is malformed.

    The result is ``[b"<PRI>1", timestamp, hostname, appname, procid, msgid,
    rest]`` where ``rest`` is STRUCTURED-DATA and the optional MSG, untouched.
    A message that ends after MSGID has no STRUCTURED-DATA, which RFC 5424
    requires, so it is malformed; a NILVALUE SD (``-`` or ``- ``) is fine.
    A header field with a byte outside PRINTUSASCII (a control character such
    as LF or NUL, DEL, or any non-ASCII byte) is malformed too: RFC 5424 allows
    none there, and such a field would break every line and frame it is put in.
    """
    parts = message.split(_SP, 6)
    if len(parts) != 7 or parts[0] not in _PRI_VERSIONS or _EMPTY in parts:
        return None
    if 0 in message[: len(message) - len(parts[6])].translate(_HEADER_CHECK):
        return None
    return parts


def is_header_field(value: bytes) -> bool:
    """Whether ``value`` may be an RFC 5424 header field: 1 or more PRINTUSASCII bytes."""
    return bool(value) and not value.translate(None, _PRINTUSASCII)


def cook(parts: list[bytes], name: bytes) -> bytes:
    """The message of ``parts`` again, with APP-NAME (the token) replaced by ``name``."""
    return _SP.join((parts[0], parts[1], parts[2], name, parts[4], parts[5], parts[6]))


# The pure functions above stay reachable (the compiled twins hand them every
# unusual message, and tests compare the two); with logplex._hot built, the
# module's split_header and cook are its twins, which handle plain RFC 5424
# headers themselves and hand anything else to these.
pure_split_header = split_header
pure_cook = cook
_hot = hotpath.compiled()
if _hot is not None:
    _hot.bind_syslog(pure_split_header, pure_cook)
    split_header = _hot.split_header  # noqa: F811
    cook = _hot.cook  # noqa: F811


@attrs.frozen
class Fields:
    """The fields of an RFC 5424 message; ``msg`` is without a leading BOM."""

    pri: int
    timestamp: bytes
    hostname: bytes
    appname: bytes
    procid: bytes
    msgid: bytes
    sd: bytes
    msg: bytes


def _sd_length(rest: bytes) -> int:
    """How many bytes of ``rest`` its STRUCTURED-DATA takes, or -1 when malformed."""
    if rest[0] == 45:  # "-"
        return 1
    n = len(rest)
    pos = 0
    while pos < n and rest[pos] == 91:  # "["
        # An SD-ID must follow the bracket.
        if pos + 1 >= n or rest[pos + 1] in b" ]\"=":
            return -1
        pos += 1
        quoted = False
        while True:
            if pos >= n:
                return -1
            c = rest[pos]
            if quoted:
                if c == 92:  # "\\": the next byte is taken literally
                    pos += 2
                    continue
                if c == 34:
                    quoted = False
                # RFC 5424 wants "]" escaped in a PARAM-VALUE; since we track
                # the quotes, an unescaped one there is still unambiguous,
                # and we keep it rather than lose the message.
            elif c == 34:  # '"'
                quoted = True
            elif c == 93:  # "]"
                pos += 1
                break
            pos += 1
    if pos == 0:
        return -1
    return pos


def parse(message: bytes) -> Fields | None:
    """All fields of an RFC 5424 message, or None when it is malformed."""
    parts = split_header(message)
    if parts is None:
        return None
    rest = parts[6]
    sd_length = _sd_length(rest)
    if sd_length < 0:
        return None
    if sd_length == len(rest):
        msg = _EMPTY
    elif rest[sd_length] == 32:
        msg = rest[sd_length + 1 :]
        if msg.startswith(_BOM):
            msg = msg[3:]
    else:
        return None
    return Fields(
        pri=int(parts[0][1:-2]),
        timestamp=parts[1],
        hostname=parts[2],
        appname=parts[3],
        procid=parts[4],
        msgid=parts[5],
        sd=rest[:sd_length],
        msg=msg,
    )


# What MSG may not show as it is in a text tail: every C0 control but TAB
# (which neither ends nor rewrites a line), DEL, and the backslash that starts
# an escape, so that an escape always means what it says.
_TAIL_UNSAFE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f\\]")
# The same bytes as NUL, every other as SP: translate() and a memchr tell at C
# speed (5 times a regex search's) whether a message needs escaping at all.
_TAIL_CHECK = bytes(0 if _TAIL_UNSAFE.match(bytes((c,))) else 32 for c in range(256))
_TAIL_ESCAPES = {bytes((c,)): b"\\x%02x" % c for c in (*range(0x20), 0x7F)}
_TAIL_ESCAPES.update({b"\n": b"\\n", b"\r": b"\\r", b"\\": b"\\\\"})
_TAIL_UNESCAPE = re.compile(rb"\\(?:x([0-9a-f]{2})|(.))", re.DOTALL)
_TAIL_UNESCAPES = {b"n": b"\n", b"r": b"\r", b"\\": b"\\"}


def _tail_escape(match: re.Match) -> bytes:
    return _TAIL_ESCAPES[match.group()]


def escape_tail_msg(msg: bytes) -> bytes:
    """MSG as a text tail shows it: LF as ``\\n``, CR as ``\\r``, a backslash as
    ``\\\\``, other C0 controls (not TAB) and DEL as ``\\xNN``; the rest as it is.

    One message is then one line whatever its sender wrote, a terminal shows no
    escape sequence of theirs, and unescape_tail_msg gives the bytes back.
    """
    if 0 not in msg.translate(_TAIL_CHECK):
        return msg
    return _TAIL_UNSAFE.sub(_tail_escape, msg)


def _tail_unescape(match: re.Match) -> bytes:
    hex_digits, char = match.groups()
    if hex_digits is not None:
        return bytes((int(hex_digits, 16),))
    return _TAIL_UNESCAPES.get(char, match.group())


def unescape_tail_msg(text: bytes) -> bytes:
    """The MSG bytes escape_tail_msg made ``text`` of."""
    return _TAIL_UNESCAPE.sub(_tail_unescape, text)


def tail_line(fields: Fields) -> bytes:
    """One line of a tail session: b"TIMESTAMP APPNAME[PROCID]: MSG\\n", MSG escaped.

    A single LF ending MSG is the line's own end (logplex-1 senders end every
    message with one), not escaped; any other control character is.
    """
    msg = fields.msg
    if msg[-1:] == b"\n":
        msg = msg[:-1]
    msg = escape_tail_msg(msg)
    if fields.procid == NILVALUE:
        return b"%s %s: %s\n" % (fields.timestamp, fields.appname, msg)
    return b"%s %s[%s]: %s\n" % (fields.timestamp, fields.appname, fields.procid, msg)


def output_message(fields: Fields) -> bytes:
    """A message in logplex's drain output format: b"<PRI>1 TS host APPNAME PROCID - MSG".

    Always the header, one space, then MSG, so with an empty MSG the result
    ends in b"- ": a reader splitting on the first six spaces finds MSG.
    """
    return b"<%d>1 %s host %s %s - %s" % (
        fields.pri,
        fields.timestamp,
        fields.appname,
        fields.procid,
        fields.msg,
    )


def make_message(
    facility: int,
    severity: int,
    timestamp: bytes,
    appname: bytes,
    procid: bytes,
    msg: bytes,
    hostname: bytes = b"host",
) -> bytes:
    """A cooked RFC 5424 message the router emits itself (errors L10, L11, L14)."""
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility {facility} is not between 0 and 23.")
    if not 0 <= severity <= 7:
        raise ValueError(f"syslog severity {severity} is not between 0 and 7.")
    return b"<%d>1 %s %s %s %s - - %s" % (
        facility * 8 + severity,
        timestamp,
        hostname,
        appname,
        procid,
        msg,
    )


def utc_timestamp(when: float) -> bytes:
    """``when`` (seconds since the epoch) as RFC 3339 UTC with microseconds."""
    moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds").encode("ascii")


def severity(pri: int) -> int:
    """The severity part of a PRI value."""
    return pri & 7


def facility(pri: int) -> int:
    """The facility part of a PRI value."""
    return pri >> 3


def matches_ps(procid: bytes, ps: bytes) -> bool:
    """Whether a tail's ``ps`` filter selects ``procid``: equal, or its part before a dot."""
    if procid == ps:
        return True
    n = len(ps)
    return n > 0 and procid[n : n + 1] == b"." and procid.startswith(ps)


_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1)}


def from_rfc3164(message: bytes, now: float) -> bytes | None:
    """An RFC 3164 line (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`) as RFC 5424, or None.

    Old senders (and stock syslog daemons) speak it; TAG takes the place of
    APP-NAME, so a sender whose program name is its token is routed. The year
    is not in the line: the current one, or the last if that would put the
    line more than a day in the future. The time is taken as UTC.
    """
    if not message.startswith(b"<"):
        return None
    close = message.find(b">", 1, 5)
    if close < 0 or not message[1:close].isdigit() or int(message[1:close]) > 191:
        return None
    pri = int(message[1:close])
    rest = message[close + 1:]
    if len(rest) < 16 or rest[15:16] != b" ":
        return None
    month = _MONTHS.get(rest[:3])
    try:
        day = int(rest[4:6])
        hour, minute, second = int(rest[7:9]), int(rest[10:12]), int(rest[13:15])
        if month is None or rest[3:4] != b" " or rest[9:10] != b":" or rest[12:13] != b":":
            return None
        current = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        stamp = datetime.datetime(current.year, month, day, hour, minute, second,
                                  tzinfo=datetime.timezone.utc)
        if stamp - current > datetime.timedelta(days=1):
            stamp = stamp.replace(year=current.year - 1)
    except ValueError:
        return None
    fields = rest[16:].split(b" ", 2)
    if len(fields) < 2:
        return None
    if fields[0].endswith(b":") or b"[" in fields[0]:
        # No HOSTNAME: the first field is already the tag.
        host, tagged = b"-", rest[16:]
    else:
        host, tagged = fields[0], rest[16:].split(b" ", 1)[1]
    tag, sep, msg = tagged.partition(b": ")
    if not sep:
        tag, sep, msg = tagged.partition(b" ")
    tag = tag.rstrip(b":")
    procid = b"-"
    if tag.endswith(b"]") and b"[" in tag:
        tag, _, pid = tag[:-1].partition(b"[")
        procid = pid or b"-"
    host = host or b"-"
    procid = procid.replace(b" ", b"_")
    # Its fields become RFC 5424 header fields, held to the same bytes.
    if len(tag) > 128 or not (is_header_field(tag) and is_header_field(host) and is_header_field(procid)):
        return None
    return b"<%d>1 %s %s %s %s - - %s" % (pri, stamp.isoformat().encode(), host, tag, procid, msg)
