"""Tests for logplex.framing: TCP syslog framing and application/logplex-1 bodies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logplex.framing import (
    DEFAULT_MAX_FRAME,
    FramingError,
    SyslogFramer,
    decode_logplex1,
    encode_logplex1,
    octet_frame,
)

SHUTTLE_LINE = (
    b"<190>1 2026-11-24T22:47:49.539580+00:00 shuttle"
    b" t.8b2e4c1a-9f3d-4e5b-a6c7-d8e9f0a1b2c3 web.1 - - line"
)
RSYSLOG_LINE = b"<13>1 2026-11-24T10:00:00.000000+00:00 myhost t.abc web.1 - - hello world"


def feed_whole(stream: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> list[bytes]:
    return SyslogFramer(max_frame).feed(stream)


def feed_split(stream: bytes, cuts: list[int], max_frame: int = DEFAULT_MAX_FRAME) -> list[bytes]:
    framer = SyslogFramer(max_frame)
    out: list[bytes] = []
    start = 0
    for cut in sorted(cuts) + [len(stream)]:
        out.extend(framer.feed(stream[start:cut]))
        start = cut
    return out


# Messages as real senders write them: never starting with a stray byte or
# ending in a trailer, since those are framing, not content.
message_bytes = st.binary(min_size=1, max_size=300).filter(
    lambda m: m[:1] not in (b"\n", b"\r", b"\x00") and m[-1:] not in (b"\n", b"\r", b"\x00")
)
# A non-transparent frame cannot hold an LF nor start with a digit.
line_bytes = message_bytes.filter(lambda m: b"\n" not in m and not m[:1].isdigit())


OCTET_KINDS = ("octet", "octet-lf-outside", "shuttle")
ALL_KINDS = OCTET_KINDS + ("line", "crlf", "nul")


@st.composite
def frames(draw: st.DrawFn, kinds: tuple[str, ...] = ALL_KINDS) -> tuple[bytes, list[bytes]]:
    """One frame in any of the shapes senders use, and the message it carries."""
    kind = draw(st.sampled_from(kinds))
    if kind in ("line", "crlf", "nul"):
        message = draw(line_bytes)
        ending = {"line": b"\n", "crlf": b"\r\n", "nul": b"\x00\n"}[kind]
        return message + ending, [message]
    message = draw(message_bytes)
    if kind == "octet":
        return b"%d %s" % (len(message), message), [message]
    if kind == "octet-lf-outside":
        return b"%d %s\n" % (len(message), message), [message]
    return octet_frame(message), [message]


@st.composite
def streams(draw: st.DrawFn, kinds: tuple[str, ...] = ALL_KINDS) -> tuple[bytes, list[bytes]]:
    drawn = draw(st.lists(frames(kinds), max_size=12))
    stream = b"".join(frame for frame, _ in drawn)
    return stream, [m for _, ms in drawn for m in ms]


class TestSyslogFramer:
    def test_octet_counted_frames_back_to_back(self) -> None:
        stream = b"%d %s%d %s" % (len(RSYSLOG_LINE), RSYSLOG_LINE, len(SHUTTLE_LINE), SHUTTLE_LINE)
        assert feed_whole(stream) == [RSYSLOG_LINE, SHUTTLE_LINE]

    def test_log_shuttle_frame_loses_its_counted_lf(self) -> None:
        body = SHUTTLE_LINE + b"\n"
        assert feed_whole(b"%d %s" % (len(body), body)) == [SHUTTLE_LINE]

    def test_non_transparent_frames(self) -> None:
        stream = RSYSLOG_LINE + b"\n" + SHUTTLE_LINE + b"\r\n"
        assert feed_whole(stream) == [RSYSLOG_LINE, SHUTTLE_LINE]

    def test_mixed_framing_on_one_connection(self) -> None:
        stream = octet_frame(SHUTTLE_LINE) + RSYSLOG_LINE + b"\n" + b"3 abc"
        assert feed_whole(stream) == [SHUTTLE_LINE, RSYSLOG_LINE, b"abc"]

    def test_stray_bytes_between_frames_are_skipped(self) -> None:
        assert feed_whole(b"\n\r\x00\n3 abc\n\n\r\x002 de\x00\x00") == [b"abc", b"de"]

    def test_trailers_are_stripped(self) -> None:
        assert feed_whole(b"5 abc\r\n") == [b"abc"]
        assert feed_whole(b"5 abc\x00\x00") == [b"abc"]
        assert feed_whole(b"abc\x00\n") == [b"abc"]
        # Only one CR and one LF are trailers; more are content.
        assert feed_whole(b"6 abc\n\r\n") == [b"abc\n"]

    def test_empty_messages_produce_nothing(self) -> None:
        assert feed_whole(b"0 \n\n\r\n1 \n1 \r3 abc") == [b"abc"]

    def test_zero_length_frame_split_after_the_space(self) -> None:
        framer = SyslogFramer()
        assert framer.feed(b"0 ") == []
        assert framer.pending == 0
        assert framer.feed(b"3 abc") == [b"abc"]

    def test_count_split_across_reads(self) -> None:
        framer = SyslogFramer()
        assert framer.feed(b"1") == []
        assert framer.pending == 1
        assert framer.feed(b"1") == []
        assert framer.feed(b" hello") == []
        assert framer.pending == len(b"11 hello")  # the count is part of the frame
        assert framer.feed(b" world") == [b"hello world"]
        assert framer.pending == 0

    def test_pending_mid_frame(self) -> None:
        framer = SyslogFramer()
        assert framer.pending == 0
        assert framer.feed(b"3 abc10 01234") == [b"abc"]
        assert framer.pending == len(b"10 01234")
        assert framer.feed(b"567") == []
        assert framer.pending == len(b"10 01234567")
        assert framer.feed(b"89partial line") == [b"0123456789"]
        assert framer.pending == len(b"partial line")
        assert framer.feed(b" goes on\n") == [b"partial line goes on"]
        assert framer.pending == 0

    def test_many_small_frames_in_one_read(self) -> None:
        messages = [b"message %d" % i for i in range(5000)]
        assert feed_whole(b"".join(octet_frame(m) for m in messages)) == messages

    def test_big_frame_in_tiny_reads(self) -> None:
        message = b"x" * 60000
        framer = SyslogFramer()
        stream = octet_frame(message)
        out: list[bytes] = []
        for i in range(0, len(stream), 7):
            out.extend(framer.feed(stream[i : i + 7]))
        assert out == [message]

    def test_frame_of_exactly_max_is_accepted(self) -> None:
        assert feed_whole(b"10 0123456789", max_frame=10) == [b"0123456789"]
        assert feed_whole(b"a123456789\n", max_frame=10) == [b"a123456789"]

    def test_oversized_length(self) -> None:
        with pytest.raises(FramingError, match="frame of 70000 bytes exceeds the 65536-byte maximum"):
            feed_whole(b"70000 <13>1 ...")

    def test_length_not_a_number(self) -> None:
        with pytest.raises(FramingError, match=r"octet count b'12x' is not a number"):
            feed_whole(b"12x abc")

    def test_length_not_a_number_split_across_reads(self) -> None:
        framer = SyslogFramer()
        framer.feed(b"12")
        with pytest.raises(FramingError, match="not a number"):
            framer.feed(b"\nabc")

    def test_length_with_too_many_digits(self) -> None:
        framer = SyslogFramer(max_frame=10**12)
        framer.feed(b"1234567890")
        with pytest.raises(FramingError, match="more than 10 digits"):
            framer.feed(b"1 x")

    def test_line_frame_over_max_without_lf(self) -> None:
        framer = SyslogFramer(max_frame=100)
        framer.feed(b"a" * 60)
        with pytest.raises(FramingError, match="exceeds the 100-byte maximum"):
            framer.feed(b"a" * 60)

    def test_complete_line_frame_over_max(self) -> None:
        with pytest.raises(FramingError, match="exceeds the 100-byte maximum"):
            feed_whole(b"a" * 101 + b"\n", max_frame=100)

    def test_framer_is_dead_after_an_error(self) -> None:
        framer = SyslogFramer()
        with pytest.raises(FramingError):
            framer.feed(b"12x abc")
        with pytest.raises(FramingError, match="not a number"):
            framer.feed(b"3 abc")

    def test_error_carries_messages_before_it(self) -> None:
        framer = SyslogFramer()
        with pytest.raises(FramingError) as caught:
            framer.feed(b"3 abcdef\n9x oops")
        assert caught.value.messages == [b"abc", b"def"]

    @settings(max_examples=300, deadline=None)
    @given(streams(), st.data())
    def test_any_split_gives_the_same_messages(self, drawn: tuple[bytes, list[bytes]], data: st.DataObject) -> None:
        stream, messages = drawn
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
        assert feed_whole(stream) == messages
        assert feed_split(stream, cuts) == messages

    @settings(max_examples=100, deadline=None)
    @given(streams())
    def test_byte_at_a_time(self, drawn: tuple[bytes, list[bytes]]) -> None:
        stream, messages = drawn
        assert feed_split(stream, list(range(len(stream)))) == messages

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.data())
    def test_garbage_raises_only_framing_error_and_is_split_independent(
        self, stream: bytes, data: st.DataObject
    ) -> None:
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
        results = []
        for cut_at in ([], cuts):
            try:
                results.append(feed_split(stream, cut_at, max_frame=64))
            except FramingError:
                results.append("error")
        assert results[0] == results[1]


class TestLogplex1:
    def test_log_shuttle_body(self) -> None:
        second = SHUTTLE_LINE.replace(b"line", b"another line")
        body = b"%d %s\n%d %s\n" % (len(SHUTTLE_LINE) + 1, SHUTTLE_LINE, len(second) + 1, second)
        assert body.startswith(b"%d <190>1 " % (len(SHUTTLE_LINE) + 1))
        assert decode_logplex1(body) == [SHUTTLE_LINE, second]

    def test_stray_lf_between_frames(self) -> None:
        assert decode_logplex1(b"3 abc\n\r\n3 def\n") == [b"abc", b"def"]

    def test_empty_body(self) -> None:
        assert decode_logplex1(b"") == []

    def test_truncated_last_frame(self) -> None:
        with pytest.raises(FramingError, match="truncated"):
            decode_logplex1(octet_frame(SHUTTLE_LINE)[:-5])

    def test_truncated_inside_count(self) -> None:
        with pytest.raises(FramingError, match="truncated"):
            decode_logplex1(octet_frame(b"abc") + b"12")

    def test_lf_framed_text_is_rejected(self) -> None:
        with pytest.raises(FramingError, match="not an octet count"):
            decode_logplex1(RSYSLOG_LINE + b"\n")

    def test_garbage_count(self) -> None:
        with pytest.raises(FramingError, match="not a number"):
            decode_logplex1(b"3 abc4x abcd")

    def test_oversized_frame(self) -> None:
        with pytest.raises(FramingError, match="exceeds the 10-byte maximum"):
            decode_logplex1(b"11 01234567890", max_frame=10)

    def test_encode(self) -> None:
        assert encode_logplex1([b"abc", b"de"]) == b"4 abc\n3 de\n"
        assert encode_logplex1([]) == b""

    def test_octet_frame(self) -> None:
        assert octet_frame(b"<13>1 x") == b"8 <13>1 x\n"

    @settings(max_examples=200, deadline=None)
    @given(st.lists(message_bytes, max_size=20))
    def test_round_trip(self, messages: list[bytes]) -> None:
        assert decode_logplex1(encode_logplex1(messages)) == messages

    @settings(max_examples=200, deadline=None)
    @given(st.lists(message_bytes, min_size=1, max_size=5), st.data())
    def test_any_truncation_raises(self, messages: list[bytes], data: st.DataObject) -> None:
        body = encode_logplex1(messages)
        # Cutting right after a frame's LF leaves a valid, shorter body.
        ends = set()
        offset = 0
        for m in messages:
            offset += len(octet_frame(m))
            ends.add(offset)
        cut = data.draw(st.integers(1, len(body) - 1).filter(lambda c: c not in ends))
        with pytest.raises(FramingError):
            decode_logplex1(body[:cut])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_garbage_raises_only_framing_error(self, body: bytes) -> None:
        try:
            decode_logplex1(body, max_frame=64)
        except FramingError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(streams(OCTET_KINDS))
    def test_agrees_with_the_framer_on_octet_counted_bodies(self, drawn: tuple[bytes, list[bytes]]) -> None:
        stream, messages = drawn
        assert decode_logplex1(stream) == messages == feed_whole(stream)


def test_a_frame_cut_right_after_its_count_is_still_pending():
    framer = SyslogFramer()
    assert framer.feed(b"12 ") == []
    assert framer.pending == 3
    assert framer.feed(b"hello") == [] and framer.pending == 8
    assert framer.feed(b" world!") == [b"hello world!"] and framer.pending == 0
    split = SyslogFramer()
    split.feed(b"12")
    split.feed(b" ")
    assert split.pending == 3
