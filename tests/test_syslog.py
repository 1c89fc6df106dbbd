"""Tests for logplex.syslog: RFC 5424 header splitting, cooking, parsing and output formats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logplex import syslog
from logplex.syslog import (
    FACILITY_LOCAL5,
    SEVERITY_WARNING,
    Fields,
    cook,
    facility,
    make_message,
    matches_ps,
    output_message,
    parse,
    severity,
    split_header,
    tail_line,
    utc_timestamp,
)

TS = b"2026-11-24T10:00:00.000000+00:00"
RSYSLOG = b"<13>1 " + TS + b" myhost t.abc web.1 - - hello world"
WITH_SD = b"<165>1 " + TS + b' myhost t.abc web.1 ID47 [exampleSDID@32473 iut="3" eventSource="Application"] msg'
ESCAPED_SD = b"<13>1 " + TS + b' myhost t.abc web.1 - [a@1 x="q\\]r s" y="\\"\\\\"][b@2 z="] "] the message'
WITH_BOM = b"<13>1 " + TS + b" myhost t.abc web.1 - - \xef\xbb\xbfh\xc3\xa9llo"


# A header field: RFC 5424's PRINTUSASCII (33-126), at least one.
PRINTUSASCII = bytes(range(33, 127))
header_field = st.binary(min_size=1, max_size=40).map(lambda b: bytes(PRINTUSASCII[c % 94] for c in b))
# A byte no header field may hold: a control character, SP aside (it separates
# fields), DEL, or anything outside ASCII.
bad_header_byte = st.integers(0, 255).filter(lambda c: not 32 <= c <= 126).map(lambda c: bytes((c,)))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A well-formed RFC 5424 message with arbitrary field contents."""
    pri = draw(st.integers(0, 191))
    fields = [draw(header_field) for _ in range(5)]
    rest = draw(st.sampled_from([b"-", b"- ", b'[id@1 a="b c"]'])) + draw(st.binary(max_size=50))
    return b"<%d>1 %s %s" % (pri, b" ".join(fields), rest)


class TestSplitHeader:
    @settings(max_examples=200, deadline=None)
    @given(messages())
    def test_accepts_every_well_formed_header(self, message: bytes) -> None:
        parts = split_header(message)
        assert parts is not None
        assert b" ".join(parts) == message

    def test_rsyslog_message(self) -> None:
        assert split_header(RSYSLOG) == [
            b"<13>1",
            TS,
            b"myhost",
            b"t.abc",
            b"web.1",
            b"-",
            b"- hello world",
        ]

    def test_structured_data_stays_in_rest(self) -> None:
        parts = split_header(WITH_SD)
        assert parts is not None
        assert parts[5] == b"ID47"
        assert parts[6] == b'[exampleSDID@32473 iut="3" eventSource="Application"] msg'

    def test_bom_is_left_in_rest(self) -> None:
        parts = split_header(WITH_BOM)
        assert parts is not None
        assert parts[6] == b"- \xef\xbb\xbfh\xc3\xa9llo"

    @pytest.mark.parametrize("rest", [b"-", b"- ", b"- x", b"[a] x"])
    def test_nil_or_present_sd(self, rest: bytes) -> None:
        parts = split_header(b"<0>1 " + TS + b" h app p m " + rest)
        assert parts is not None and parts[6] == rest

    @pytest.mark.parametrize("pri", [b"<0>1", b"<7>1", b"<99>1", b"<191>1", b"<009>1"])
    def test_valid_pri(self, pri: bytes) -> None:
        assert split_header(pri + b" " + TS + b" h app p - - x") is not None

    @pytest.mark.parametrize(
        "message",
        [
            pytest.param(b"<13>2 " + TS + b" h app p - - x", id="version 2"),
            pytest.param(b"<13>10 " + TS + b" h app p - - x", id="version 10"),
            pytest.param(b"<13> " + TS + b" h app p - - x", id="no version"),
            pytest.param(b"<192>1 " + TS + b" h app p - - x", id="PRI 192"),
            pytest.param(b"<999>1 " + TS + b" h app p - - x", id="PRI 999"),
            pytest.param(b"<1000>1 " + TS + b" h app p - - x", id="PRI 4 digits"),
            pytest.param(b"<>1 " + TS + b" h app p - - x", id="PRI empty"),
            pytest.param(b"<1a>1 " + TS + b" h app p - - x", id="PRI not digits"),
            pytest.param(b"<-1>1 " + TS + b" h app p - - x", id="PRI negative"),
            pytest.param(b"13>1 " + TS + b" h app p - - x", id="no <"),
            pytest.param(b"<13>1 " + TS + b" h app p -", id="no SD"),
            pytest.param(b"<13>1 " + TS + b" h app p - ", id="empty SD"),
            pytest.param(b"<13>1 " + TS + b" h app", id="missing fields"),
            pytest.param(b"<13>1 " + TS + b"  app p - - x", id="empty hostname"),
            pytest.param(b"<13>1  " + TS + b" h app p - - x", id="empty timestamp"),
            pytest.param(b"Nov 24 10:00:00 myhost app: hi", id="RFC 3164"),
            pytest.param(b"", id="empty"),
        ],
    )
    def test_malformed(self, message: bytes) -> None:
        assert split_header(message) is None

    @pytest.mark.parametrize(
        "message",
        [
            pytest.param(b"<13>1 " + TS + b" h app web.1\n2026-11-24T10:00:00Z heroku[router]: x - - m",
                         id="LF in PROCID"),
            pytest.param(b"<13>1 " + TS + b"\x00 h app p - - x", id="NUL in TIMESTAMP"),
            pytest.param(b"<13>1 " + TS + b" h\x1b[2J app p - - x", id="ESC in HOSTNAME"),
            pytest.param(b"<13>1 " + TS + b" h\xc3\xa9 app p - - x", id="UTF-8 in HOSTNAME"),
            pytest.param(b"<13>1 " + TS + b" h app\t p - - x", id="TAB in APP-NAME"),
            pytest.param(b"<13>1 " + TS + b" h app p ID\x7f - x", id="DEL in MSGID"),
        ],
    )
    def test_a_header_field_outside_printusascii_is_malformed(self, message: bytes) -> None:
        assert split_header(message) is None
        assert parse(message) is None

    @settings(max_examples=300, deadline=None)
    @given(messages(), st.integers(1, 5), st.data(), bad_header_byte)
    def test_any_header_with_a_control_byte_is_malformed(
        self, message: bytes, index: int, data: st.DataObject, bad: bytes
    ) -> None:
        parts = split_header(message)
        assert parts is not None
        field = parts[index]
        at = data.draw(st.integers(0, len(field)))
        parts[index] = field[:at] + bad + field[at:]
        assert split_header(b" ".join(parts)) is None

    @settings(max_examples=200, deadline=None)
    @given(messages(), st.binary(max_size=40))
    def test_msg_may_hold_any_bytes(self, message: bytes, msg: bytes) -> None:
        assert split_header(message + b" " + msg) is not None


class TestCook:
    def test_replaces_the_token_by_the_name(self) -> None:
        parts = split_header(RSYSLOG)
        assert parts is not None
        kept = list(parts)
        assert cook(parts, b"app") == b"<13>1 " + TS + b" myhost app web.1 - - hello world"
        assert parts == kept

    def test_keeps_structured_data_and_bom(self) -> None:
        for message in (WITH_SD, ESCAPED_SD, WITH_BOM):
            parts = split_header(message)
            assert parts is not None
            assert cook(parts, b"t.abc") == message

    @settings(max_examples=200, deadline=None)
    @given(st.data(), header_field)
    def test_cook_changes_only_appname(self, data: st.DataObject, name: bytes) -> None:
        message = data.draw(messages())
        parts = split_header(message)
        assert parts is not None
        cooked = cook(parts, name)
        assert split_header(cooked) == parts[:3] + [name] + parts[4:]
        assert cooked == b" ".join(parts[:3] + [name] + parts[4:])


class TestParse:
    def test_nil_sd(self) -> None:
        assert parse(RSYSLOG) == Fields(
            pri=13,
            timestamp=TS,
            hostname=b"myhost",
            appname=b"t.abc",
            procid=b"web.1",
            msgid=b"-",
            sd=b"-",
            msg=b"hello world",
        )

    def test_sd_with_spaces_in_values(self) -> None:
        fields = parse(WITH_SD)
        assert fields is not None
        assert fields.pri == 165
        assert fields.msgid == b"ID47"
        assert fields.sd == b'[exampleSDID@32473 iut="3" eventSource="Application"]'
        assert fields.msg == b"msg"

    def test_escapes_and_several_elements(self) -> None:
        fields = parse(ESCAPED_SD)
        assert fields is not None
        assert fields.sd == b'[a@1 x="q\\]r s" y="\\"\\\\"][b@2 z="] "]'
        assert fields.msg == b"the message"

    def test_bom_is_stripped(self) -> None:
        fields = parse(WITH_BOM)
        assert fields is not None
        assert fields.msg == "héllo".encode()

    @pytest.mark.parametrize("rest", [b"-", b"- ", b"[a]", b"[a] "])
    def test_empty_msg(self, rest: bytes) -> None:
        fields = parse(b"<13>1 " + TS + b" h app p - " + rest)
        assert fields is not None
        assert fields.msg == b""

    def test_msg_keeps_its_own_spaces(self) -> None:
        fields = parse(b"<13>1 " + TS + b" h app p - -   indented ")
        assert fields is not None
        assert fields.msg == b"  indented "

    @pytest.mark.parametrize(
        "rest",
        [
            pytest.param(b"-x", id="junk after nil SD"),
            pytest.param(b"[a", id="unclosed element"),
            pytest.param(b'[a x="]', id="unclosed quote"),
            pytest.param(b'[a x="\\', id="escape at end"),
            pytest.param(b"[] x", id="no SD-ID"),
            pytest.param(b"[ a] x", id="space for SD-ID"),
            pytest.param(b"[a]x", id="no space before MSG"),
            pytest.param(b"x y", id="neither nil nor element"),
        ],
    )
    def test_malformed_sd(self, rest: bytes) -> None:
        assert parse(b"<13>1 " + TS + b" h app p - " + rest) is None

    def test_malformed_header(self) -> None:
        assert parse(b"<192>1 " + TS + b" h app p - - x") is None

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_never_raises_on_garbage(self, message: bytes) -> None:
        parse(message)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.sampled_from([b"[", b"]", b'"', b"\\", b" ", b"=", b"a", b"-", b"\xef\xbb\xbf"]), max_size=30)
    )
    def test_never_raises_on_sd_like_garbage(self, pieces: list[bytes]) -> None:
        fields = parse(b"<13>1 " + TS + b" h app p - " + b"".join(pieces))
        if fields is not None:
            assert fields.sd == b"-" or (fields.sd.startswith(b"[") and fields.sd.endswith(b"]"))


def fields(procid: bytes = b"console.1", msg: bytes = b"hi") -> Fields:
    return Fields(
        pri=190,
        timestamp=b"2012-12-10T03:00:48Z+00:00",
        hostname=b"shuttle",
        appname=b"app",
        procid=procid,
        msgid=b"-",
        sd=b'[x@1 a="b"]',
        msg=msg,
    )


class TestTailLine:
    def test_with_procid(self) -> None:
        assert tail_line(fields()) == b"2012-12-10T03:00:48Z+00:00 app[console.1]: hi\n"

    def test_nil_procid(self) -> None:
        assert tail_line(fields(procid=b"-")) == b"2012-12-10T03:00:48Z+00:00 app: hi\n"

    def test_msg_ending_in_lf(self) -> None:
        assert tail_line(fields(msg=b"hi\n")) == b"2012-12-10T03:00:48Z+00:00 app[console.1]: hi\n"

    def test_empty_msg(self) -> None:
        assert tail_line(fields(msg=b"")) == b"2012-12-10T03:00:48Z+00:00 app[console.1]: \n"

    def test_a_forged_line_stays_in_its_message(self) -> None:
        forged = b"hi\n2012-12-10T03:00:49Z+00:00 heroku[router]: at=info status=200"
        assert tail_line(fields(msg=forged)) == (
            b"2012-12-10T03:00:48Z+00:00 app[console.1]: hi\\n2012-12-10T03:00:49Z+00:00 heroku[router]: "
            b"at=info status=200\n")

    @pytest.mark.parametrize("msg, shown", [
        (b"a\r\nb", b"a\\r\\nb"),
        (b"nul\x00 esc\x1b[2J del\x7f", b"nul\\x00 esc\\x1b[2J del\\x7f"),
        (b"C:\\temp\\n", b"C:\\\\temp\\\\n"),  # a backslash is doubled: \\n is never a line break
        (b"tab\there", b"tab\there"),  # TAB neither ends nor rewrites a line
        (b"two\n\n", b"two\\n"),  # only one ending LF is the line's own
        (b"h\xc3\xa9 \xff", b"h\xc3\xa9 \xff"),  # bytes past ASCII are the reader's charset's to show
    ])
    def test_control_characters_are_escaped(self, msg: bytes, shown: bytes) -> None:
        assert tail_line(fields(msg=msg)) == b"2012-12-10T03:00:48Z+00:00 app[console.1]: " + shown + b"\n"

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=80), st.sampled_from([b"console.1", b"-"]))
    def test_any_msg_is_one_line_and_comes_back(self, msg: bytes, procid: bytes) -> None:
        line = tail_line(fields(msg=msg, procid=procid))
        assert line.count(b"\n") == 1 and line.endswith(b"\n")
        assert b"\r" not in line and b"\x00" not in line and b"\x1b" not in line
        prefix = b"2012-12-10T03:00:48Z+00:00 app" + (b": " if procid == b"-" else b"[console.1]: ")
        assert line.startswith(prefix)
        # Back to the bytes the sender wrote, less the one LF that ends a logplex-1 message.
        assert syslog.unescape_tail_msg(line[len(prefix):-1]) == msg.removesuffix(b"\n")


class TestOutputMessage:
    def test_format(self) -> None:
        assert output_message(fields()) == b"<190>1 2012-12-10T03:00:48Z+00:00 host app console.1 - hi"

    def test_empty_msg_ends_after_the_space(self) -> None:
        assert output_message(fields(msg=b"")) == b"<190>1 2012-12-10T03:00:48Z+00:00 host app console.1 - "

    def test_from_a_parsed_message(self) -> None:
        parsed = parse(WITH_SD)
        assert parsed is not None
        assert output_message(parsed) == b"<165>1 " + TS + b" host t.abc web.1 - msg"


class TestMakeMessage:
    def test_l10(self) -> None:
        message = make_message(
            FACILITY_LOCAL5,
            SEVERITY_WARNING,
            TS,
            b"heroku",
            b"logplex",
            b"Error L10 (output buffer overflow): 3 messages dropped since " + TS + b".",
        )
        assert message == (
            b"<172>1 " + TS + b" host heroku logplex - - "
            b"Error L10 (output buffer overflow): 3 messages dropped since " + TS + b"."
        )
        parsed = parse(message)
        assert parsed is not None
        assert facility(parsed.pri) == FACILITY_LOCAL5
        assert severity(parsed.pri) == SEVERITY_WARNING

    def test_hostname(self) -> None:
        assert make_message(1, 6, TS, b"a", b"p", b"m", hostname=b"node1") == b"<14>1 " + TS + b" node1 a p - - m"

    @pytest.mark.parametrize("fac, sev", [(24, 0), (-1, 0), (0, 8), (0, -1)])
    def test_out_of_range(self, fac: int, sev: int) -> None:
        with pytest.raises(ValueError):
            make_message(fac, sev, TS, b"a", b"p", b"m")


def test_utc_timestamp() -> None:
    assert utc_timestamp(1795560469.53958) == b"2026-11-24T22:47:49.539580+00:00"
    assert utc_timestamp(0) == b"1970-01-01T00:00:00.000000+00:00"


@pytest.mark.parametrize(
    "procid, ps, expected",
    [
        (b"web.1", b"web", True),
        (b"web", b"web", True),
        (b"web.1", b"web.1", True),
        (b"web.12", b"web.1", False),
        (b"webx.1", b"web", False),
        (b"worker.1", b"web", False),
        (b"we", b"web", False),
        (b"web", b"web.1", False),
        (b"run.1.2", b"run.1", True),
        (b".1", b"", False),
        (b"-", b"web", False),
    ],
)
def test_matches_ps(procid: bytes, ps: bytes, expected: bool) -> None:
    assert matches_ps(procid, ps) is expected


# -- RFC 3164 lines from old senders ------------------------------------------------------

NOV_24_2026 = 1795600000.0  # 2026-11-24T07:06:40Z


@pytest.mark.parametrize("line, expected", [
    (b"<13>Nov 24 10:00:01 myhost t.abc-123[42]: hello world",
     b"<13>1 2026-11-24T10:00:01+00:00 myhost t.abc-123 42 - - hello world"),
    (b"<13>Nov  4 10:00:01 myhost myapp: hi",
     b"<13>1 2026-11-04T10:00:01+00:00 myhost myapp - - - hi"),
    (b"<13>Nov 24 10:00:01 t.abc: no host field",
     b"<13>1 2026-11-24T10:00:01+00:00 - t.abc - - - no host field"),
    # More than a day ahead means last year's December.
    (b"<13>Dec 31 23:00:00 h app: late",
     b"<13>1 2025-12-31T23:00:00+00:00 h app - - - late"),
])
def test_rfc3164_lines_become_rfc5424(line, expected):
    assert syslog.from_rfc3164(line, NOV_24_2026) == expected
    assert syslog.split_header(expected) is not None


@pytest.mark.parametrize("line", [
    b"<13>bad", b"<999>Nov 24 10:00:01 h t: x", b"<13>Foo 24 10:00:01 h t: x",
    b"<13>Nov 31 10:00:01 h t: x", b"<13>Nov 24 25:00:01 h t: x", b"no pri at all", b"",
    # Control characters in what becomes a header field.
    b"<13>Nov 24 10:00:01 h\x00 t: x", b"<13>Nov 24 10:00:01 h t\x1b[1]: x",
    b"<13>Nov 24 10:00:01 h t[4\n2]: x", b"<13>Nov 24 10:00:01 h t[\xe9]: x",
])
def test_lines_that_are_not_rfc3164_are_refused(line):
    assert syslog.from_rfc3164(line, NOV_24_2026) is None


@given(st.binary(max_size=200))
def test_rfc3164_conversion_never_raises(data):
    converted = syslog.from_rfc3164(b"<13>Nov 24 10:00:01 " + data, NOV_24_2026)
    assert converted is None or syslog.split_header(converted) is not None
