"""The config records: a channel's identity, and the grants and sessions that name it."""

import json

from logplex.model import (
    ANY_CHANNEL,
    FULL_API,
    LEGACY_INCARNATION,
    READ_CHANNEL,
    Channel,
    Credential,
    Drain,
    SessionSpec,
    Token,
)


def reader(*channels: Channel, legacy: tuple[str, ...] = ()) -> Credential:
    return Credential("reader", "hash", frozenset({READ_CHANNEL}),
                      channels=frozenset([c.id for c in channels] + list(legacy)),
                      incarnations=frozenset((c.id, c.incarnation) for c in channels))


def test_a_channel_made_now_has_an_incarnation_no_other_has():
    made = [Channel.new("app") for _ in range(100)]
    assert len({c.incarnation for c in made}) == 100
    assert LEGACY_INCARNATION not in {c.incarnation for c in made}
    assert Channel.from_json("app", made[0].to_json().encode()) == made[0]


def test_a_channel_stored_before_identity_reads_and_writes_as_it_was():
    old = Channel.from_json("app", b'{"flags": ["no_tail"]}')
    assert old.incarnation == LEGACY_INCARNATION
    assert json.loads(old.to_json()) == {"flags": ["no_tail"]}


def test_a_grant_reads_the_channel_it_was_made_for_and_no_later_one_of_its_name():
    first = Channel.new("app")
    successor = Channel.new("app")
    cred = reader(first)
    assert cred.can_read(first) and not cred.can_read(successor)
    assert cred.may_read_name("app") and not cred.may_read_name("other")
    again = Credential.from_json("reader", cred.to_json().encode())
    assert again == cred and again.can_read(first) and not again.can_read(successor)
    assert json.loads(cred.to_json())["incarnations"] == {"app": first.incarnation}


def test_a_grant_stored_before_identity_reads_its_legacy_channel_until_it_is_replaced():
    doc = b'{"hash": "h", "perms": ["read_channel"], "note": "", "channels": ["app"]}'
    cred = Credential.from_json("reader", doc)
    assert cred.can_read(Channel("app"))
    assert not cred.can_read(Channel.new("app"))
    assert "incarnations" not in json.loads(cred.to_json())


def test_full_api_reads_every_channel_and_other_permissions_none():
    admin = Credential("admin", "h", frozenset({FULL_API}))
    shuttle = Credential("shuttle", "h", frozenset({ANY_CHANNEL}))
    for channel in (Channel("app"), Channel.new("app")):
        assert admin.can_read(channel) and not shuttle.can_read(channel)
    assert not shuttle.may_read_name("app")


def test_a_session_reads_only_the_channel_it_was_made_for():
    first, successor = Channel.new("app"), Channel.new("app")
    spec = SessionSpec(id="s", channel_id="app", incarnation=first.incarnation)
    assert spec.reads(first) and not spec.reads(successor) and not spec.reads(Channel("app"))
    assert SessionSpec.from_json("s", spec.to_json().encode()) == spec
    legacy = SessionSpec.from_json("s", b'{"channel_id": "app", "num": 5, "tail": true, "ps": null, "source": null}')
    assert legacy.reads(Channel("app")) and not legacy.reads(first)


def test_a_grant_of_a_legacy_channel_is_one_record_in_memory_and_stored():
    cred = reader(Channel("app"))
    assert cred.incarnations == frozenset() and cred.can_read(Channel("app"))
    assert Credential.from_json("reader", cred.to_json().encode()) == cred


def test_a_record_is_the_doc_it_was_written_as_and_no_other():
    """What a config load compares each record read with, so as to keep the one it holds."""
    records = [Channel("app", frozenset({"no_tail"}), "inc"), Channel("app"), Token("t.1", "app", "web"),
               Drain(7, "app", "d.7", "https://x.example/"), Drain(8, "app", "d.8")]
    for record in records:
        doc = json.loads(record.to_json())
        assert record.is_doc(doc) and type(record).from_doc(record.id, doc) == record
        others = [json.loads(r.to_json()) for r in records if type(r) is type(record) and r != record]
        assert not any(record.is_doc(other) for other in others if type(record).from_doc(record.id, other) != record)
