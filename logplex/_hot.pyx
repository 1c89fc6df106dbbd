# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twins of logplex's per-message loops; logplex.hotpath decides whether they run.

Each function here gives exactly what its pure-Python twin gives (tests/test_hot.py
checks that on adversarial input). A function handles only the common,
well-formed case itself and hands anything unusual (a bad or incomplete frame,
a trailer to strip, a header that is not plain RFC 5424, structured data, input
that is not ``bytes``) to the Python function named in its docstring, so the
rules for the edge cases exist once, in Python.

The framing and syslog twins get their Python fallbacks through ``bind_framing``
and ``bind_syslog`` (those modules call them while importing, so this module
imports nothing of logplex at import time and no import cycle can form). The
drain-format twins call logplex.syslog's parser, looked up when first needed.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromFormat, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memchr, memcmp, memcpy

# logplex.hotpath refuses a build whose API differs from the one it expects
# (a stale in-place build after this file changed its functions).
API = 5

ctypedef const unsigned char* cbytes

cdef enum:
    # Every trailer byte (NUL, LF, CR) is <= this (framing._HIGHEST_TRAILER).
    HIGHEST_TRAILER = 13
    # framing._MAX_COUNT_DIGITS.
    MAX_COUNT_DIGITS = 10

# The Python functions anything unusual is handed to (set by bind_*).
cdef object _py_scan = None
cdef object _py_strip = None
cdef object _py_split_header = None
cdef object _py_cook = None


cdef inline cbytes _chars(bytes data):
    return <cbytes>PyBytes_AS_STRING(data)


cdef inline bytes _slice(cbytes p, Py_ssize_t start, Py_ssize_t end):
    # A new bytes object straight from the buffer: no slice object, no bounds logic.
    return PyBytes_FromStringAndSize(<const char*>p + start, end - start)


# Copies p[start:end] to w; where the next byte goes.
cdef inline char* _put(char* w, cbytes p, Py_ssize_t start, Py_ssize_t end) noexcept:
    memcpy(w, p + start, end - start)
    return w + (end - start)


# == framing ==========================================================================================

def bind_framing(scan, strip):
    """Give ``scan`` framing's pure ``_scan`` and ``_strip`` to hand unusual frames to."""
    global _py_scan, _py_strip
    _py_scan = scan
    _py_strip = strip


def scan(data, Py_ssize_t pos, out, Py_ssize_t max_frame, lines):
    """framing._scan, compiled: the messages of the complete frames in ``data[pos:]`` appended to ``out``.

    Handled here: stray NUL/LF/CR between frames, octet-counted frames with a
    1-10 digit count within ``max_frame`` that are complete in ``data``, and
    (when ``lines``) LF-terminated frames within ``max_frame``. A message with a
    trailer goes through framing._strip. Anything else (an incomplete frame, a
    bad or oversized count, a frame that is not counted in a logplex-1 body) is
    handed, from its first byte, to framing._scan, which decides: it returns
    where the incomplete frame starts or raises the FramingError.
    """
    if type(data) is not bytes or type(out) is not list:
        return _py_scan(data, pos, out, max_frame, lines)
    cdef bytes buf = <bytes>data
    cdef list messages = <list>out
    cdef cbytes p = _chars(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef bint by_line = bool(lines)
    cdef Py_ssize_t i, start, end, lf, digits_end
    cdef long long length
    cdef unsigned char c, last
    cdef cbytes found
    if pos < 0:
        return _py_scan(data, pos, out, max_frame, lines)
    while pos < n:
        c = p[pos]
        if 48 <= c <= 57:
            # The count: at most MAX_COUNT_DIGITS digits then SP, read in place
            # (the pure code slices the field and calls isdigit() and int()).
            length = 0
            i = pos
            digits_end = pos + MAX_COUNT_DIGITS
            while i < n and i < digits_end and 48 <= p[i] <= 57:
                length = length * 10 + (p[i] - 48)
                i += 1
            if i >= n or p[i] != 32 or length > max_frame:
                return _py_scan(data, pos, out, max_frame, lines)
            start = i + 1
            end = start + <Py_ssize_t>length
            if end > n:
                return _py_scan(data, pos, out, max_frame, lines)
            if length:
                last = p[end - 1]
                if last > HIGHEST_TRAILER:
                    messages.append(_slice(p, start, end))
                elif last == 10 and length > 1 and p[end - 2] > HIGHEST_TRAILER:
                    # log-shuttle's and syslog drains' counted LF.
                    messages.append(_slice(p, start, end - 1))
                else:
                    _append_stripped(messages, _slice(p, start, end))
            pos = end
        elif c == 10 or c == 13 or c == 0:
            pos += 1
        elif not by_line:
            return _py_scan(data, pos, out, max_frame, lines)
        else:
            found = <cbytes>memchr(p + pos, 10, n - pos)
            if found == NULL:
                return _py_scan(data, pos, out, max_frame, lines)
            lf = found - p
            if lf - pos > max_frame:
                return _py_scan(data, pos, out, max_frame, lines)
            # data[pos] is no trailer byte, so lf - 1 >= pos.
            if p[lf - 1] > HIGHEST_TRAILER:
                messages.append(_slice(p, pos, lf))
            else:
                _append_stripped(messages, _slice(p, pos, lf))
            pos = lf + 1
    return n


cdef inline void _append_stripped(list messages, bytes message) except *:
    message = _py_strip(message)
    if message:
        messages.append(message)


# == syslog ===========================================================================================

def bind_syslog(split_header, cook):
    """Give the twins syslog's pure ``split_header`` and ``cook`` to hand unusual messages to."""
    global _py_split_header, _py_cook
    _py_split_header = split_header
    _py_cook = cook


cdef bint _header_ends(cbytes p, Py_ssize_t n, Py_ssize_t* ends) noexcept:
    """Whether ``p[:n]`` starts with a plain RFC 5424 header; ``ends`` gets its six SPs.

    Plain: ``<PRI>1`` with PRI 0-191 in 1-3 digits, five non-empty fields of
    PRINTUSASCII bytes each ended by one SP, and a non-empty rest. One pass,
    no copy; every other message is for syslog.split_header to judge.
    """
    cdef Py_ssize_t i = 1, field, start
    cdef int pri = 0
    cdef unsigned char c
    if n < 5 or p[0] != 60:  # "<"
        return False
    while i < n and i < 4 and 48 <= p[i] <= 57:
        pri = pri * 10 + (p[i] - 48)
        i += 1
    if i == 1 or pri > 191 or i + 2 >= n or p[i] != 62 or p[i + 1] != 49 or p[i + 2] != 32:
        return False  # not "<PRI>1 "
    ends[0] = i + 2
    for field in range(1, 6):
        start = ends[field - 1] + 1
        i = start
        while i < n:
            c = p[i]
            if c == 32:
                break
            if c < 33 or c > 126:
                return False  # a byte no header field may hold
            i += 1
        if i >= n or i == start:
            return False  # too few fields, or an empty one
        ends[field] = i
    return ends[5] + 1 < n  # something after MSGID


def split_header(message):
    """syslog.split_header, compiled: the 7 header parts of a plain RFC 5424 message.

    Anything else (malformed, RFC 3164, not bytes) gets syslog.split_header's
    answer, None or parts.
    """
    if type(message) is not bytes:
        return _py_split_header(message)
    cdef bytes buf = <bytes>message
    cdef cbytes p = _chars(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t ends[6]
    if not _header_ends(p, n, ends):
        return _py_split_header(message)
    return [
        _slice(p, 0, ends[0]),
        _slice(p, ends[0] + 1, ends[1]),
        _slice(p, ends[1] + 1, ends[2]),
        _slice(p, ends[2] + 1, ends[3]),
        _slice(p, ends[3] + 1, ends[4]),
        _slice(p, ends[4] + 1, ends[5]),
        _slice(p, ends[5] + 1, n),
    ]


def group(messages, routes, route, odd):
    """router.pure_group, compiled: the messages, cooked, grouped by the channel they go to.

    A message with a plain RFC 5424 header whose APP-NAME is a key of ``routes``
    (or every such message, given ``route``) is cooked here, with the target's
    name as APP-NAME, in one allocation and no other object; consecutive
    messages of one token look it up once. Every other message (not plain,
    an unknown token) is ``odd(message)``'s to judge: None, or the (channel
    id, cooked message) it goes to. One that is not bytes takes the pure
    loop's steps (syslog.split_header first), errors included.
    """
    cdef list items = messages if type(messages) is list else list(messages)
    cdef dict by_channel = {}
    cdef bint plain_routes = type(routes) is dict
    cdef object message, target, channel_id, name, cooked, app
    cdef object last_app = None, last_target = None, last_channel = None
    cdef list last_batch = None
    cdef bytes buf
    cdef cbytes p
    cdef Py_ssize_t n, app_size, name_size
    cdef Py_ssize_t ends[6]
    cdef char* w
    for message in items:
        target = None
        parts = None
        if type(message) is not bytes:
            # As the pure loop does it, errors included.
            parts = _py_split_header(message)
            if parts is not None:
                target = route if route is not None else routes.get(parts[3])
        else:
            buf = <bytes>message
            p = _chars(buf)
            n = PyBytes_GET_SIZE(buf)
            if _header_ends(p, n, ends):
                if route is not None:
                    target = route
                else:
                    app_size = ends[3] - ends[2] - 1
                    if last_app is not None and PyBytes_GET_SIZE(<bytes>last_app) == app_size \
                            and memcmp(PyBytes_AS_STRING(<bytes>last_app), p + ends[2] + 1, app_size) == 0:
                        target = last_target
                    else:
                        app = _slice(p, ends[2] + 1, ends[3])
                        target = routes.get(app) if not plain_routes else (<dict>routes).get(app)
                        last_app, last_target = app, target
        if target is None:
            routed = odd(message)
            if routed is None:
                continue
            channel_id, cooked = routed
        else:
            channel_id, name = target
            if type(name) is bytes and parts is None:
                # The message with bytes ends[2]+1 .. ends[3] (APP-NAME) replaced by name.
                name_size = PyBytes_GET_SIZE(<bytes>name)
                cooked = PyBytes_FromStringAndSize(NULL, n - (ends[3] - ends[2] - 1) + name_size)
                w = PyBytes_AS_STRING(<bytes>cooked)
                w = _put(w, p, 0, ends[2] + 1)
                memcpy(w, PyBytes_AS_STRING(<bytes>name), name_size)
                _put(w + name_size, p, ends[3], n)
            else:
                cooked = _py_cook(parts if parts is not None else _py_split_header(message), name)
        if channel_id is last_channel and last_batch is not None:
            last_batch.append(cooked)
            continue
        batch = by_channel.get(channel_id)
        if batch is None:
            last_batch = [cooked]
            by_channel[channel_id] = last_batch
        else:
            last_batch = <list>batch
            last_batch.append(cooked)
        last_channel = channel_id
    return by_channel


def cook(parts, name):
    """syslog.cook, compiled: the 7 parts joined by SP with ``name`` as APP-NAME, in one allocation.

    Anything but a list of 7 bytes and a bytes name goes to syslog.cook.
    """
    if type(parts) is not list or type(name) is not bytes:
        return _py_cook(parts, name)
    cdef list items = <list>parts
    if len(items) != 7:
        return _py_cook(parts, name)
    cdef Py_ssize_t k, total = 6
    cdef object piece
    for k in range(7):
        piece = name if k == 3 else items[k]
        if type(piece) is not bytes:
            return _py_cook(parts, name)
        total += PyBytes_GET_SIZE(<bytes>piece)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, total)
    cdef char* w = PyBytes_AS_STRING(result)
    cdef Py_ssize_t size
    for k in range(7):
        piece = name if k == 3 else items[k]
        size = PyBytes_GET_SIZE(<bytes>piece)
        memcpy(w, PyBytes_AS_STRING(<bytes>piece), size)
        w += size
        if k < 6:
            w[0] = 32
            w += 1
    return result


# == drain formats (drains/formats.py) ====================================================================
# drains.formats binds these in place of its pure functions (kept there as pure_*).
# Their fallback for a message with structured data (or otherwise not plain) is
# logplex.syslog's parser, as in drains.formats.

cdef object _syslog = None
cdef bytes _BOM = b"\xef\xbb\xbf"


cdef object _syslog_module():
    global _syslog
    if _syslog is None:
        from logplex import syslog
        _syslog = syslog
    return _syslog


# Where drains.formats._plain finds the pieces of a plain message, as offsets.
cdef struct Plain:
    Py_ssize_t ends[6]      # the first six SPs of the message
    Py_ssize_t msg_start    # MSG after "- " (and a BOM); msg ends at the message's end


cdef bint _find_plain(cbytes p, Py_ssize_t n, Plain* plain) noexcept:
    """drains.formats._plain's test, in place: at least six SPs, no zero-padded PRI
    (but ``<0>1``), and the rest after the sixth SP ``-`` or ``- ...``."""
    cdef Py_ssize_t pos = 0, k
    cdef cbytes found
    for k in range(6):
        found = <cbytes>memchr(p + pos, 32, n - pos)
        if found == NULL:
            return False
        plain.ends[k] = found - p
        pos = plain.ends[k] + 1
    # parts[0][1:2] == b"0" and parts[0] != b"<0>1"
    if plain.ends[0] >= 2 and p[1] == 48 and not (
            plain.ends[0] == 4 and p[0] == 60 and p[2] == 62 and p[3] == 49):
        return False
    pos = plain.ends[5] + 1  # the rest: SD and MSG
    if n - pos >= 2 and p[pos] == 45 and p[pos + 1] == 32:
        pos += 2
    elif n - pos == 1 and p[pos] == 45:
        pos += 1
    else:
        return False
    if n - pos >= 3 and p[pos] == 0xEF and p[pos + 1] == 0xBB and p[pos + 2] == 0xBF:
        pos += 3
    plain.msg_start = pos
    return True


def plain(message: bytes):
    """drains.formats._plain, compiled: (header parts, MSG) of a message without structured data, else None."""
    cdef cbytes p = _chars(message)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(message)
    cdef Plain found
    if not _find_plain(p, n, &found):
        return None
    parts = [_slice(p, 0, found.ends[0])]
    for k in range(1, 6):
        parts.append(_slice(p, found.ends[k - 1] + 1, found.ends[k]))
    parts.append(_slice(p, found.ends[5] + 1, n))
    return parts, _slice(p, found.msg_start, n)


cdef inline Py_ssize_t _plain_line_size(Py_ssize_t n, Plain* f) noexcept:
    # b"%s %s host %s %s - %s" % (pri, ts, app, procid, msg): the parts' bytes,
    # "host", 5 SPs and "- ".
    return (f.ends[0] + (f.ends[1] - f.ends[0] - 1) + (f.ends[3] - f.ends[2] - 1)
            + (f.ends[4] - f.ends[3] - 1) + (n - f.msg_start) + 4 + 5 + 2)


cdef char* _write_plain_line(char* w, cbytes p, Py_ssize_t n, Plain* f) noexcept:
    w = _put(w, p, 0, f.ends[0])                      # PRI and VERSION
    w[0] = 32
    w = _put(w + 1, p, f.ends[0] + 1, f.ends[1])      # TIMESTAMP
    memcpy(w, b" host ", 6)
    w = _put(w + 6, p, f.ends[2] + 1, f.ends[3])      # APP-NAME
    w[0] = 32
    w = _put(w + 1, p, f.ends[3] + 1, f.ends[4])      # PROCID
    memcpy(w, b" - ", 3)
    return _put(w + 3, p, f.msg_start, n)             # MSG


def output_line(message: bytes):
    """drains.formats.output_line, compiled: ``<PRI>1 TS host APPNAME PROCID - MSG``, or None.

    A message that is not plain goes to syslog.parse and syslog.output_message.
    """
    cdef cbytes p = _chars(message)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(message)
    cdef Plain f
    if not _find_plain(p, n, &f):
        return _parsed_line(message)
    cdef bytes line = PyBytes_FromStringAndSize(NULL, _plain_line_size(n, &f))
    _write_plain_line(PyBytes_AS_STRING(line), p, n, &f)
    return line


cdef object _parsed_line(bytes message):
    syslog = _syslog_module()
    fields = syslog.parse(message)
    return syslog.output_message(fields) if fields is not None else None


cdef inline int _digits(Py_ssize_t value) noexcept:
    cdef int count = 1
    while value >= 10:
        value //= 10
        count += 1
    return count


cdef char* _write_count(char* w, Py_ssize_t value, int width) noexcept:
    # The decimal digits of value, written from the last one back.
    cdef int k
    for k in range(width - 1, -1, -1):
        w[k] = <char>(48 + value % 10)
        value //= 10
    return w + width


cdef class _Buffer:
    """A growing C buffer a body is written into, copied once into bytes at the end.

    One allocation per body instead of one bytes object per message plus a join.
    """

    cdef char* data
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    def __cinit__(self, Py_ssize_t capacity):
        self.capacity = capacity if capacity > 64 else 64
        self.data = <char*>PyMem_Malloc(self.capacity)
        self.size = 0
        if self.data == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.data)

    cdef char* reserve(self, Py_ssize_t more) except NULL:
        """Room for ``more`` bytes at the end; where they go."""
        cdef Py_ssize_t want = self.size + more
        cdef Py_ssize_t capacity = self.capacity
        cdef char* grown
        if want > capacity:
            while capacity < want:
                capacity *= 2
            grown = <char*>PyMem_Realloc(self.data, capacity)
            if grown == NULL:
                raise MemoryError()
            self.data = grown
            self.capacity = capacity
        return self.data + self.size

    cdef bytes take(self):
        return PyBytes_FromStringAndSize(self.data, self.size)


def http_body(messages):
    """drains.formats.http_body, compiled: an application/logplex-1 body of output lines, and its count."""
    cdef _Buffer out = _Buffer(16384)
    cdef Py_ssize_t count = 0, n, size
    cdef int width
    cdef cbytes p
    cdef char* w
    cdef Plain f
    cdef bytes message
    for item in messages:
        message = <bytes?>item
        p = _chars(message)
        n = PyBytes_GET_SIZE(message)
        if _find_plain(p, n, &f):
            # b"%d %s\n" % (len(line) + 1, line), written in place.
            size = _plain_line_size(n, &f) + 1
            width = _digits(size)
            w = out.reserve(width + 1 + size)
            w = _write_count(w, size, width)
            w[0] = 32
            w = _write_plain_line(w + 1, p, n, &f)
            w[0] = 10
            out.size += width + 1 + size
        else:
            line = _parsed_line(message)
            if line is None:
                continue
            _frame_into(out, <bytes>line, b"", b"\n")
        count += 1
    return out.take(), count


cdef void _frame_into(_Buffer out, bytes body, bytes head, bytes tail) except *:
    """b"%d %s%s%s" % (len(head + body + tail), head, body, tail) appended to ``out``."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(body) + PyBytes_GET_SIZE(tail)
    cdef int width = _digits(size)
    cdef char* w = out.reserve(width + 1 + size)
    w = _write_count(w, size, width)
    w[0] = 32
    w += 1
    memcpy(w, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    w += PyBytes_GET_SIZE(head)
    memcpy(w, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
    w += PyBytes_GET_SIZE(body)
    memcpy(w, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))
    out.size += width + 1 + size


def syslog_frames(messages, drain_token: bytes):
    """drains.formats.syslog_frames, compiled: octet-counted frames with the drain token as HOSTNAME."""
    cdef _Buffer out = _Buffer(16384)
    cdef Py_ssize_t n, size, token_size = PyBytes_GET_SIZE(drain_token)
    cdef int width
    cdef cbytes p
    cdef cbytes token = _chars(drain_token)
    cdef char* w
    cdef Plain f
    cdef bytes message
    for item in messages:
        message = <bytes?>item
        p = _chars(message)
        n = PyBytes_GET_SIZE(message)
        if _find_plain(p, n, &f):
            # b"%s %s %s %s %s - - %s\n" % (pri, ts, token, app, procid, msg)
            size = (f.ends[0] + (f.ends[1] - f.ends[0] - 1) + token_size + (f.ends[3] - f.ends[2] - 1)
                    + (f.ends[4] - f.ends[3] - 1) + (n - f.msg_start) + 5 + 5)
            width = _digits(size)
            w = out.reserve(width + 1 + size)
            w = _write_count(w, size, width)
            w[0] = 32
            w = _put(w + 1, p, 0, f.ends[0])
            w[0] = 32
            w = _put(w + 1, p, f.ends[0] + 1, f.ends[1])
            w[0] = 32
            w = _put(w + 1, token, 0, token_size)
            w[0] = 32
            w = _put(w + 1, p, f.ends[2] + 1, f.ends[3])
            w[0] = 32
            w = _put(w + 1, p, f.ends[3] + 1, f.ends[4])
            memcpy(w, b" - - ", 5)
            w = _put(w + 5, p, f.msg_start, n)
            w[0] = 10
            out.size += width + 1 + size
        else:
            fields = _syslog_module().parse(message)
            if fields is None:
                continue
            line = b"<%d>1 %s %s %s %s - - %s\n" % (fields.pri, fields.timestamp, drain_token,
                                                    fields.appname, fields.procid, fields.msg)
            _frame_into(out, <bytes>line, b"", b"")
    return out.take()


# == tails (tails/session.py) =========================================================================

cdef inline bint _tail_unsafe(cbytes p, Py_ssize_t start, Py_ssize_t end) noexcept:
    """Whether MSG bytes need syslog.escape_tail_msg: a C0 control but TAB, DEL, or a backslash."""
    cdef unsigned char c
    cdef Py_ssize_t i
    for i in range(start, end):
        c = p[i]
        if (c < 32 and c != 9) or c == 127 or c == 92:
            return True
    return False


cdef inline void _append_one(list out, object one, object message) except *:
    line = one(message)
    if line is not None:
        out.append(line)


def tail_lines(messages, ps, source, one):
    """tails.session.TailFilter.lines with the text render, compiled: ``TS APP[PROCID]: MSG\\n`` of
    every message the ``ps`` and ``source`` filters (bytes or None) let through.

    A message with a plain RFC 5424 header, NILVALUE structured data and a MSG
    that needs no escaping is done here; every other one (structured data, a
    header syslog.split_header must judge, a MSG to escape, not bytes) is
    ``one(message)``'s: its line, or None.
    """
    cdef list items = messages if type(messages) is list else list(messages)
    cdef list out = []
    cdef bytes buf, line
    cdef cbytes p
    cdef Py_ssize_t n, start, end, pid_size, size
    cdef Py_ssize_t ends[6]
    cdef bint with_pid
    cdef char* w
    cdef const char* want
    cdef Py_ssize_t want_size
    if source is not None and type(source) is not bytes or ps is not None and type(ps) is not bytes:
        for message in items:
            _append_one(out, one, message)
        return out
    for message in items:
        if type(message) is not bytes:
            _append_one(out, one, message)
            continue
        buf = <bytes>message
        p = _chars(buf)
        n = PyBytes_GET_SIZE(buf)
        # syslog.parse: a plain header, then "-" alone or "- " and MSG (a BOM before it dropped).
        if not _header_ends(p, n, ends) or p[ends[5] + 1] != 45 or (ends[5] + 2 < n and p[ends[5] + 2] != 32):
            _append_one(out, one, message)
            continue
        start = ends[5] + 3 if ends[5] + 2 < n else n
        if n - start >= 3 and p[start] == 0xEF and p[start + 1] == 0xBB and p[start + 2] == 0xBF:
            start += 3
        if source is not None:
            want, want_size = PyBytes_AS_STRING(<bytes>source), PyBytes_GET_SIZE(<bytes>source)
            if ends[3] - ends[2] - 1 != want_size or memcmp(p + ends[2] + 1, want, want_size) != 0:
                continue
        pid_size = ends[4] - ends[3] - 1
        if ps is not None:
            # syslog.matches_ps: PROCID is ps, or ps and a dot begin it.
            want, want_size = PyBytes_AS_STRING(<bytes>ps), PyBytes_GET_SIZE(<bytes>ps)
            if memcmp(p + ends[3] + 1, want, want_size if want_size <= pid_size else 0) != 0 \
                    or want_size > pid_size \
                    or (want_size < pid_size and (want_size == 0 or p[ends[3] + 1 + want_size] != 46)):
                continue
        end = n - 1 if n > start and p[n - 1] == 10 else n  # one LF ending MSG is the line's own
        if _tail_unsafe(p, start, end):
            _append_one(out, one, message)
            continue
        with_pid = not (pid_size == 1 and p[ends[3] + 1] == 45)
        # TIMESTAMP SP APP-NAME ["[" PROCID "]"] ":" SP MSG LF
        size = (ends[1] - ends[0] - 1) + 1 + (ends[3] - ends[2] - 1) + (pid_size + 2 if with_pid else 0) \
            + 2 + (end - start) + 1
        line = PyBytes_FromStringAndSize(NULL, size)
        w = PyBytes_AS_STRING(line)
        w = _put(w, p, ends[0] + 1, ends[1])
        w[0] = 32
        w = _put(w + 1, p, ends[2] + 1, ends[3])
        if with_pid:
            w[0] = 91
            w = _put(w + 1, p, ends[3] + 1, ends[4])
            w[0] = 93
            w += 1
        w[0] = 58
        w[1] = 32
        w = _put(w + 2, p, start, end)
        w[0] = 10
        out.append(line)
    return out


# == drain queues (drains/queue.py) ===================================================================

cdef object _queue = None


def fitting(messages, Py_ssize_t max_bytes, Py_ssize_t total, bint at_least_one=True):
    """drains.queue.fitting, compiled: how many of the first messages fit in max_bytes, and their bytes.

    Sizes summed up to the first message that does not fit, nothing more.
    Anything but a non-empty list of bytes goes to drains.queue.pure_fitting.
    """
    global _queue
    if type(messages) is not list or not messages:
        if _queue is None:
            from logplex.drains import queue
            _queue = queue
        return _queue.pure_fitting(messages, max_bytes, total, at_least_one)
    cdef list items = <list>messages
    cdef Py_ssize_t count = len(items), n = 0, size = 0, next_size
    if total <= max_bytes:
        return count, total
    for item in items:
        if type(item) is not bytes:
            if _queue is None:
                from logplex.drains import queue
                _queue = queue
            return _queue.pure_fitting(messages, max_bytes, total, at_least_one)
        next_size = size + PyBytes_GET_SIZE(<bytes>item)
        if next_size > max_bytes:
            break
        size = next_size
        n += 1
    if n == 0:
        if not at_least_one:
            return 0, 0
        return 1, PyBytes_GET_SIZE(<bytes>items[0])  # one message larger than a batch still goes, alone
    return n, size


# == RESP (redis/connection.py) ========================================================================

def build_command(tuple args, encode):
    """redis.connection._Protocol._build_command, compiled: one RESP array of bulk strings.

    ``encode`` (the protocol's _encode_value) turns an argument that is not
    bytes into bytes, as in the pure method. Two passes: sizes, then one
    allocation written in place.
    """
    cdef Py_ssize_t count = len(args), k, total, size
    cdef list encoded = None
    cdef object arg
    for k in range(count):
        if type(args[k]) is not bytes:
            if encoded is None:
                encoded = list(args)
            arg = encode(args[k])
            # As b"%s" % arg would: any bytes-like value, nothing else.
            encoded[k] = arg if type(arg) is bytes else bytes(memoryview(arg))
    cdef tuple items = tuple(encoded) if encoded is not None else args
    # b"*%d\r\n" then b"$%d\r\n%s\r\n" per argument.
    total = 1 + _digits(count) + 2
    for k in range(count):
        size = PyBytes_GET_SIZE(<bytes>items[k])
        total += 1 + _digits(size) + 2 + size + 2
    cdef bytes result = PyBytes_FromStringAndSize(NULL, total)
    cdef char* w = PyBytes_AS_STRING(result)
    w[0] = 42  # "*"
    w = _write_count(w + 1, count, _digits(count))
    w[0] = 13
    w[1] = 10
    w += 2
    for k in range(count):
        size = PyBytes_GET_SIZE(<bytes>items[k])
        w[0] = 36  # "$"
        w = _write_count(w + 1, size, _digits(size))
        w[0] = 13
        w[1] = 10
        memcpy(w + 2, PyBytes_AS_STRING(<bytes>items[k]), size)
        w += 2 + size
        w[0] = 13
        w[1] = 10
        w += 2
    return result


# == backlog queue (backlog/writer.py) ================================================================

cdef object _writer = None


cdef object _writer_module():
    global _writer
    if _writer is None:
        from logplex.backlog import writer
        _writer = writer
    return _writer


cdef inline Py_ssize_t _sizes(list items, Py_ssize_t start, Py_ssize_t stop) except -1:
    # The lengths of items[start:stop]: bytes read in C, anything else through len().
    cdef Py_ssize_t total = 0, k
    cdef object item
    for k in range(start, stop):
        item = items[k]
        total += PyBytes_GET_SIZE(<bytes>item) if type(item) is bytes else len(item)
    return total


def enqueue(pending, batches, Py_ssize_t history):
    """backlog.writer.pure_enqueue, compiled: one read's lines queued per channel, newest
    ``history`` kept; (lines added, their bytes, lines superseded).

    Anything but dicts of lists (pending's and batches' values) goes to the pure one.
    """
    if type(pending) is not dict or type(batches) is not dict:
        return _writer_module().pure_enqueue(pending, batches, history)
    cdef dict queue = <dict>pending, reads = <dict>batches
    cdef object channel_id, messages, found
    for messages in reads.values():
        if type(messages) is not list:
            return _writer_module().pure_enqueue(pending, batches, history)
    cdef Py_ssize_t count = 0, size = 0, superseded = 0, n, excess
    cdef list lines, queued
    for channel_id, messages in reads.items():
        lines = <list>messages
        n = len(lines)
        count += n
        size += _sizes(lines, 0, n)
        found = queue.get(channel_id)
        if found is None:
            queued = lines[:]
            queue[channel_id] = queued
        elif type(found) is list:
            queued = <list>found
            queued.extend(lines)
        else:
            found.extend(lines)
            if len(found) > history:
                excess = len(found) - history
                size -= sum(map(len, found[:excess]))
                del found[:excess]
                count -= excess
                superseded += excess
            continue
        n = len(queued)
        if n > history:
            excess = n - history
            size -= _sizes(queued, 0, excess)
            del queued[:excess]
            count -= excess
            superseded += excess
    return count, size, superseded


def write_calls(bytes prefix, batch, tuple head, fresh, Py_ssize_t max_bytes=1024 * 1024):
    """backlog.writer.pure_write_calls, compiled: the batch as WRITE_SCRIPT calls of about
    max_bytes of lines each, cut by channel; per call (channel ids, KEYS, ARGV).

    Anything but a dict of str -> list of bytes goes to the pure one.
    """
    if type(batch) is not dict:
        return _writer_module().pure_write_calls(prefix, batch, head, fresh, max_bytes)
    cdef dict channels = <dict>batch
    cdef object channel_id, lines, line
    for channel_id, lines in channels.items():
        if type(channel_id) is not str or type(lines) is not list:
            return _writer_module().pure_write_calls(prefix, batch, head, fresh, max_bytes)
        for line in <list>lines:
            if type(line) is not bytes:
                return _writer_module().pure_write_calls(prefix, batch, head, fresh, max_bytes)
    cdef list calls = [], ids = [], names = [], args = list(head)
    cdef Py_ssize_t size = 0, n, prefix_size = PyBytes_GET_SIZE(prefix), id_size
    cdef bytes utf8, key
    cdef char* w
    for channel_id, lines in channels.items():
        ids.append(channel_id)
        utf8 = (<str>channel_id).encode()
        id_size = PyBytes_GET_SIZE(utf8)
        key = PyBytes_FromStringAndSize(NULL, prefix_size + id_size)
        w = PyBytes_AS_STRING(key)
        memcpy(w, PyBytes_AS_STRING(prefix), prefix_size)
        memcpy(w + prefix_size, PyBytes_AS_STRING(utf8), id_size)
        names.append(key)
        n = len(<list>lines)
        args.append(PyBytes_FromFormat("%zd", -n if channel_id in fresh else n))
        args.extend(<list>lines)
        size += _sizes(<list>lines, 0, n)
        if size >= max_bytes:
            calls.append((ids, names, args))
            ids, names, args, size = [], [], list(head), 0
    if ids:
        calls.append((ids, names, args))
    return calls
