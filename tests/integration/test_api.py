"""The management API of a real node on a real Redis: auth, channels, tokens, drains, sessions, logs."""

from __future__ import annotations

import json
import re

import pytest

from tests.harness.cluster import redis as redis_command
from tests.harness.client import (
    ADMIN,
    LOGPLEX1,
    NO_BODY,
    TS,
    basic,
    decode_logplex1,
    http_request,
    logplex1,
    syslog_message,
    unique,
    wait_for,
)

TOKEN = re.compile(r"^t\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
DRAIN_TOKEN = re.compile(r"^d\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CHALLENGE = "Basic realm=Logplex"

# Every management route, with ids that need not exist: auth comes first.
MANAGEMENT_ROUTES = [
    ("POST", "/channels"),
    ("GET", "/v2/channels/1"),
    ("DELETE", "/v2/channels/1"),
    ("DELETE", "/channels/1"),
    ("GET", "/channels/1/info"),
    ("POST", "/v2/channels/1/tokens"),
    ("POST", "/channels/1/token"),
    ("POST", "/v2/channels/1/drains"),
    ("POST", "/channels/1/drains/tokens"),
    ("POST", "/v2/channels/1/drains/1"),
    ("DELETE", "/v2/channels/1/drains/1"),
    ("POST", "/sessions"),
    ("POST", "/v2/sessions"),
    ("POST", "/v3/sessions"),
    ("PUT", "/v3/channels/some-app"),
    ("GET", "/v3/channels/some-app"),
    ("DELETE", "/v3/channels/some-app"),
    ("POST", "/v3/channels/some-app/tokens"),
    ("POST", "/v3/channels/some-app/drains"),
    ("GET", "/v3/channels/some-app/drains/1"),
    ("PUT", "/v3/channels/some-app/drains/1"),
    ("DELETE", "/v3/channels/some-app/drains/1"),
    ("GET", "/v3/channels/some-app/logs"),
]


def assert_error(answer, status: int) -> None:
    """An error answer: the status, and a JSON {"error": sentence}."""
    assert answer.status == status, answer
    assert answer.header("Content-Type") == "application/json", answer.headers
    doc = answer.json()
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"], doc


def v2_channel(node, *tokens: str) -> tuple[int, dict[str, str]]:
    answer = node.api("POST", "/channels", {"name": "x", "tokens": list(tokens)})
    assert answer.status == 201, answer
    doc = answer.json()
    return doc["channel_id"], doc["tokens"]


# -- health, auth, request ids ---------------------------------------------------------------
def test_healthcheck_answers_normal_without_auth(node):
    answer = http_request(node.api_port, "GET", "/healthcheck")
    assert answer.status == 200
    assert answer.header("Content-Type") == "application/json"
    assert answer.json()["status"] == "normal"


@pytest.mark.parametrize("method,path", MANAGEMENT_ROUTES)
def test_management_route_refuses_missing_or_wrong_credentials(node, method, path):
    for auth in (None, basic("admin", "not-the-secret"), basic("nobody", "secret"),
                 "Bearer whatever", "Basic !!!not-base64"):
        headers = {} if auth is None else {"Authorization": auth}
        answer = node.api(method, path, {}, auth=None, headers=headers)
        assert_error(answer, 401)
        assert answer.header("WWW-Authenticate") == CHALLENGE, (auth, answer.headers)


def test_credential_without_full_api_is_forbidden(node, limited_credentials):
    poster = limited_credentials["poster"]
    answer = wait_for(lambda: node.api("GET", "/v3/channels/some-app", auth=poster),
                      lambda a: a.status != 401)
    assert_error(answer, 403)
    assert_error(node.api("POST", "/channels", {"tokens": ["app"]}, auth=poster), 403)


def test_every_answer_carries_a_request_id(node):
    answers = [
        http_request(node.api_port, "GET", "/healthcheck"),
        http_request(node.api_port, "GET", "/no/such/thing"),
        node.api("GET", "/v3/channels/some-app", auth=None),
        node.api("GET", f"/v3/channels/{unique()}"),
        node.api("PUT", f"/v3/channels/{unique()}", {"tokens": []}),
        node.post_logs(b"", auth=None),
    ]
    ids = [a.header("Request-Id") for a in answers]
    assert all(ids), [a.headers for a in answers]
    assert len(set(ids)) == len(ids), ids


def test_an_incoming_request_id_is_echoed(node):
    rid = "req-" + unique()
    for answer in (
        http_request(node.api_port, "GET", "/healthcheck", headers={"Request-Id": rid}),
        node.api("GET", "/v3/channels/no-such-channel-here", headers={"Request-Id": rid}),
        node.api("GET", "/v3/channels/x", auth=None, headers={"Request-Id": rid}),
    ):
        assert answer.header("Request-Id") == rid, answer


# -- v2 channels and tokens -------------------------------------------------------------------
def test_v2_channel_create_read_add_token_delete(node):
    answer = node.api("POST", "/channels", {"name": "x", "tokens": ["app", "web"]})
    assert answer.status == 201, answer
    doc = answer.json()
    assert sorted(doc) == ["channel_id", "tokens"]
    channel_id = doc["channel_id"]
    assert isinstance(channel_id, int) and not isinstance(channel_id, bool)
    assert sorted(doc["tokens"]) == ["app", "web"]
    assert all(TOKEN.match(t) for t in doc["tokens"].values()), doc
    assert doc["tokens"]["app"] != doc["tokens"]["web"]

    second, _ = v2_channel(node, "app")
    assert second > channel_id

    answer = node.api("GET", f"/v2/channels/{channel_id}")
    assert answer.status == 200, answer
    got = answer.json()
    assert sorted(got) == ["channel_id", "drains", "tokens"], got
    assert got["channel_id"] == channel_id and got["drains"] == []
    # The order of the token list is not part of the contract.
    assert sorted(got["tokens"], key=lambda t: t["name"]) == [
        {"name": "app", "token": doc["tokens"]["app"]},
        {"name": "web", "token": doc["tokens"]["web"]},
    ]

    answer = node.api("POST", f"/v2/channels/{channel_id}/tokens", {"name": "worker"})
    assert answer.status == 201, answer
    token = answer.json()
    assert sorted(token) == ["name", "token"] and token["name"] == "worker"
    assert TOKEN.match(token["token"]) and token["token"] not in doc["tokens"].values()

    listed = node.api("GET", f"/v2/channels/{channel_id}").json()["tokens"]
    assert sorted((t["name"], t["token"]) for t in listed) == sorted(
        [*doc["tokens"].items(), ("worker", token["token"])])

    answer = node.api("GET", f"/channels/{channel_id}/info")
    assert answer.status == 200, answer
    assert answer.json() == {
        "channel_id": channel_id,
        "tokens": {**doc["tokens"], "worker": token["token"]},
        "drains": [],
    }

    answer = node.api("DELETE", f"/v2/channels/{channel_id}")
    assert answer.status == 200, answer
    assert_error(node.api("GET", f"/v2/channels/{channel_id}"), 404)
    assert_error(node.api("GET", f"/channels/{channel_id}/info"), 404)
    assert_error(node.api("DELETE", f"/v2/channels/{channel_id}"), 404)
    assert_error(node.api("POST", f"/v2/channels/{channel_id}/tokens", {"name": "late"}), 404)
    # The other channel is untouched.
    assert node.api("GET", f"/v2/channels/{second}").status == 200


def test_v2_channel_without_tokens(node):
    answer = node.api("POST", "/channels", {"name": "x"})
    assert answer.status == 201, answer
    assert answer.json()["tokens"] == {}


@pytest.mark.parametrize("body,status", [
    ({"name": "x", "tokens": "app"}, 422),
    ({"name": "x", "tokens": ["has space"]}, 422),
    ({"name": "x", "tokens": [7]}, 422),
    ({"name": "x", "tokens": [""]}, 422),
    (["app"], 422),
    (b"{not json", 400),
    (b"\xff\xfe", 400),
])
def test_v2_channel_create_rejects_bad_bodies(node, body, status):
    assert_error(node.api("POST", "/channels", body), status)


def test_v2_token_name_is_checked(node):
    channel_id, _ = v2_channel(node, "app")
    for body, status in (({"name": "a b"}, 422), ({}, 422), ({"name": 5}, 422), (b"[", 400)):
        assert_error(node.api("POST", f"/v2/channels/{channel_id}/tokens", body), status)
    assert_error(node.api("POST", "/v2/channels/999999999/tokens", {"name": "x"}), 404)


# -- drains -----------------------------------------------------------------------------------
def test_v2_drains_create_conflict_list_delete(node):
    channel_id, _ = v2_channel(node, "app")
    url = "http://127.0.0.1:9/drain-a"
    answer = node.api("POST", f"/v2/channels/{channel_id}/drains", {"url": url})
    assert answer.status == 201, answer
    drain = answer.json()
    assert sorted(drain) == ["id", "token", "url"]
    assert isinstance(drain["id"], int) and DRAIN_TOKEN.match(drain["token"]) and drain["url"] == url

    assert_error(node.api("POST", f"/v2/channels/{channel_id}/drains", {"url": url}), 409)
    assert_error(node.api("POST", "/v2/channels/999999999/drains", {"url": url}), 404)

    second = node.api("POST", f"/v2/channels/{channel_id}/drains",
                      {"url": "syslog://127.0.0.1:9"}).json()
    assert second["id"] > drain["id"] and second["token"] != drain["token"]

    doc = node.api("GET", f"/v2/channels/{channel_id}").json()
    assert doc["drains"] == [drain, second]
    assert node.api("GET", f"/channels/{channel_id}/info").json()["drains"] == [url, "syslog://127.0.0.1:9"]

    answer = node.api("DELETE", f"/v2/channels/{channel_id}/drains/{drain['id']}")
    assert answer.status == 200, answer
    assert_error(node.api("DELETE", f"/v2/channels/{channel_id}/drains/{drain['id']}"), 404)
    assert node.api("GET", f"/v2/channels/{channel_id}").json()["drains"] == [second]
    # The URL is free again.
    assert node.api("POST", f"/v2/channels/{channel_id}/drains", {"url": url}).status == 201


def test_the_same_drain_url_on_another_channel_is_fine(node):
    url = "http://127.0.0.1:9/shared"
    for _ in range(2):
        channel_id, _ = v2_channel(node)
        assert node.api("POST", f"/v2/channels/{channel_id}/drains", {"url": url}).status == 201


@pytest.mark.parametrize("body", [
    {"url": "example.com/logs"},
    {"url": "ftp://example.com/logs"},
    {"url": "syslog+udp://example.com:514"},
    {"url": "http://"},
    {"url": ""},
    {"url": 42},
    {"url": ["http://example.com/"]},
    {"url": None},
    {},
])
def test_v2_drain_url_must_be_valid(node, body):
    channel_id, _ = v2_channel(node)
    assert_error(node.api("POST", f"/v2/channels/{channel_id}/drains", body), 422)
    assert node.api("GET", f"/v2/channels/{channel_id}").json()["drains"] == []


@pytest.mark.parametrize("body", [
    {"url": "example.com/logs"},
    {"url": "ftp://example.com/logs"},
    {"url": 42},
])
def test_v3_drain_url_must_be_valid(node, body):
    channel_id, _ = node.channel("app")
    assert_error(node.api("POST", f"/v3/channels/{channel_id}/drains", body), 400)  # as logplex's v3
    assert "drains" not in node.api("GET", f"/v3/channels/{channel_id}").json()


def test_drain_body_must_be_json_object(node):
    channel_id, _ = node.channel("app")
    assert_error(node.api("POST", f"/v3/channels/{channel_id}/drains", ["http://127.0.0.1:9/"]), 400)
    assert_error(node.api("POST", f"/v3/channels/{channel_id}/drains", b"{"), 400)


def test_a_seventh_drain_is_refused(node):
    channel_id, _ = node.channel("app")
    for i in range(6):
        answer = node.api("POST", f"/v3/channels/{channel_id}/drains", {"url": f"http://127.0.0.1:9/{i}"})
        assert answer.status == 201, (i, answer)
    assert_error(node.api("POST", f"/v3/channels/{channel_id}/drains", {"url": "http://127.0.0.1:9/6"}), 422)
    # A reservation counts too.
    assert_error(node.api("POST", f"/v3/channels/{channel_id}/drains", {}), 422)
    assert len(node.api("GET", f"/v3/channels/{channel_id}").json()["drains"]) == 6


def test_v3_drains_create_reserve_update_delete(node):
    channel_id, _ = node.channel("app")
    base = f"/v3/channels/{channel_id}/drains"

    answer = node.api("POST", base, {"url": "https://127.0.0.1:9/one"})
    assert answer.status == 201, answer
    one = answer.json()
    assert sorted(one) == ["id", "token", "url"] and one["url"] == "https://127.0.0.1:9/one"
    assert DRAIN_TOKEN.match(one["token"])
    assert answer.header("Location") == f"{node.api_url}{base}/{one['id']}"

    answer = node.api("POST", base, {})
    assert answer.status == 201, answer
    reserved = answer.json()
    assert sorted(reserved) == ["id", "token"] and DRAIN_TOKEN.match(reserved["token"])
    assert answer.header("Location") == f"{node.api_url}{base}/{reserved['id']}"
    # Without a url the drain is not listed yet.
    assert node.api("GET", f"/v3/channels/{channel_id}").json()["drains"] == [one]

    answer = node.api("PUT", f"{base}/{reserved['id']}", {"url": "syslog+tls://127.0.0.1:6514"})
    assert answer.status == 200, answer
    given = {**reserved, "url": "syslog+tls://127.0.0.1:6514"}
    assert answer.json() == given
    # A single drain's GET may add its delivery state: the rest is the drain.
    shown = node.api("GET", f"{base}/{reserved['id']}").json()
    assert {k: shown[k] for k in ("id", "token", "url")} == given, shown
    assert node.api("GET", f"/v3/channels/{channel_id}").json()["drains"] == [one, given]

    # Pointing it at the other drain's URL is a conflict; an invalid URL is refused.
    assert_error(node.api("PUT", f"{base}/{reserved['id']}", {"url": one["url"]}), 409)
    assert_error(node.api("PUT", f"{base}/{reserved['id']}", {"url": "ftp://127.0.0.1/"}), 400)
    assert_error(node.api("PUT", f"{base}/{reserved['id']}", {}), 400)
    assert_error(node.api("PUT", f"{base}/999999999", {"url": "http://127.0.0.1:9/z"}), 404)

    answer = node.api("DELETE", f"{base}/{one['id']}")
    assert answer.status == 204 and answer.body == b"", answer
    assert_error(node.api("DELETE", f"{base}/{one['id']}"), 404)
    assert_error(node.api("GET", f"{base}/{one['id']}"), 404)
    assert node.api("GET", f"/v3/channels/{channel_id}").json()["drains"] == [given]


def test_drain_of_another_channel_is_not_found(node):
    first, _ = node.channel("app")
    second, _ = node.channel("app")
    drain = node.api("POST", f"/v3/channels/{first}/drains", {"url": "http://127.0.0.1:9/x"}).json()
    assert_error(node.api("DELETE", f"/v3/channels/{second}/drains/{drain['id']}"), 404)
    assert_error(node.api("PUT", f"/v3/channels/{second}/drains/{drain['id']}",
                          {"url": "http://127.0.0.1:9/y"}), 404)
    assert node.api("GET", f"/v3/channels/{first}").json()["drains"] == [drain]


def test_v1_drain_reservation_then_v2_url(node):
    channel_id, _ = v2_channel(node, "app")
    answer = node.api("POST", f"/channels/{channel_id}/drains/tokens", NO_BODY)
    assert answer.status == 201, answer
    reserved = answer.json()
    assert isinstance(reserved["id"], int) and DRAIN_TOKEN.match(reserved["token"])
    assert node.api("GET", f"/v2/channels/{channel_id}").json()["drains"] == []

    url = "http://127.0.0.1:9/reserved"
    answer = node.api("POST", f"/v2/channels/{channel_id}/drains/{reserved['id']}", {"url": url})
    assert answer.status == 201, answer
    assert answer.json() == {"id": reserved["id"], "token": reserved["token"], "url": url}
    assert node.api("GET", f"/v2/channels/{channel_id}").json()["drains"] == [answer.json()]

    assert_error(node.api("POST", f"/v2/channels/{channel_id}/drains/{reserved['id']}", {"url": "x"}), 422)
    assert_error(node.api("POST", f"/v2/channels/{channel_id}/drains/999999999", {"url": url + "2"}), 404)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x",
    "http://10.1.2.3/",
    "http://localhost/",
    "syslog://[::1]:514",
    "https://192.168.0.10/drain",
    "syslog+tls://169.254.169.254:6514",
    "http://[::ffff:127.0.0.1]/",
])
def test_private_drain_destinations_are_refused_by_default(public_node, url):
    v2_id, _ = v2_channel(public_node, "app")
    assert_error(public_node.api("POST", f"/v2/channels/{v2_id}/drains", {"url": url}), 422)
    v3_id, _ = public_node.channel("app")
    assert_error(public_node.api("POST", f"/v3/channels/{v3_id}/drains", {"url": url}), 422)
    reserved = public_node.api("POST", f"/v3/channels/{v3_id}/drains", {}).json()
    assert_error(public_node.api("PUT", f"/v3/channels/{v3_id}/drains/{reserved['id']}", {"url": url}), 422)
    assert "drains" not in public_node.api("GET", f"/v3/channels/{v3_id}").json()


@pytest.mark.parametrize("url", [
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f.0.0.1/",
    "http://0/",
])
def test_loopback_in_other_spellings_is_refused_by_default(public_node, url):
    channel_id, _ = public_node.channel("app")
    assert_error(public_node.api("POST", f"/v3/channels/{channel_id}/drains", {"url": url}), 422)


def test_public_drain_destination_is_accepted_by_default(public_node):
    channel_id, _ = public_node.channel("app")
    answer = public_node.api("POST", f"/v3/channels/{channel_id}/drains",
                             {"url": "https://logs.example.com/drain"})
    assert answer.status == 201, answer


# -- v3 channels ----------------------------------------------------------------------------------
def test_v3_channel_put_get_update_delete(node):
    name = unique("app")
    path = f"/v3/channels/{name}"
    answer = node.api("PUT", path, {"tokens": ["a", "b"]})
    assert answer.status == 201, answer
    doc = answer.json()
    assert sorted(doc) == ["channel", "tokens"] and doc["channel"] == name
    assert sorted(doc["tokens"]) == ["a", "b"] and all(TOKEN.match(t) for t in doc["tokens"].values())

    again = node.api("PUT", path, {"tokens": ["a", "b"]})
    assert again.status == 200, again
    assert again.json() == doc

    answer = node.api("PUT", path, {"tokens": ["b", "c"]})
    assert answer.status == 200, answer
    updated = answer.json()
    assert sorted(updated["tokens"]) == ["b", "c"]
    assert updated["tokens"]["b"] == doc["tokens"]["b"]
    assert TOKEN.match(updated["tokens"]["c"]) and updated["tokens"]["c"] not in doc["tokens"].values()

    drain = node.api("POST", f"{path}/drains", {"url": "http://127.0.0.1:9/v3"}).json()
    answer = node.api("GET", path)
    assert answer.status == 200, answer
    assert answer.json() == {"channel": name, "tokens": updated["tokens"], "drains": [drain]}

    answer = node.api("DELETE", path)
    assert answer.status == 204 and answer.body == b"", answer
    assert_error(node.api("GET", path), 404)
    assert_error(node.api("DELETE", path), 404)
    assert_error(node.api("POST", f"{path}/tokens", {"name": "d"}), 404)
    assert_error(node.api("POST", f"{path}/drains", {"url": "http://127.0.0.1:9/v3"}), 404)


@pytest.mark.parametrize("method, path, body, status", [
    # logplex's v3 (logplex_api_v3_SUITE): malformed input is 400, refused input 422.
    ("PUT", "/v3/channels/{new}", ["asdf", 123, ["test"]], 400),
    ("PUT", "/v3/channels/{new}", {"tokens": "app"}, 400),
    ("POST", "/v3/channels/{ch}/tokens", {}, 400),
    ("POST", "/v3/channels/{ch}/tokens", {"name": 5}, 400),
    ("POST", "/v3/channels/{ch}/tokens", {"name": "a b"}, 422),
    ("POST", "/v3/channels/{ch}/drains", {"url": "i am not a url"}, 400),
    ("POST", "/v3/channels/{ch}/drains", {"url": "ftp://logs.example.com/"}, 400),
    ("POST", "/v3/channels/{ch}/drains", {"url": "syslog+udp://logs.example.com:514"}, 422),
    ("POST", "/v3/channels/{ch}/drains", ["x"], 400),
    # v1 and v2 keep logplex's own codes.
    ("POST", "/channels/{v2}/token", {}, 400),
    ("POST", "/v2/channels/{v2}/drains", {"url": "i am not a url"}, 422),
    ("POST", "/v2/channels/{v2}/tokens", {}, 422),
])
def test_status_codes_of_malformed_input_are_logplexs(node, method, path, body, status):
    channel_id, _ = node.channel("app")
    v2 = node.api("POST", "/channels", {"tokens": ["app"]}).json()["channel_id"]
    answer = node.api(method, path.format(new=unique(), ch=channel_id, v2=v2), body)
    assert answer.status == status, answer
    assert answer.json()["error"], answer


def test_v3_add_token(node):
    channel_id, tokens = node.channel("app")
    answer = node.api("POST", f"/v3/channels/{channel_id}/tokens", {"name": "router"})
    assert answer.status == 200, answer  # as logplex's v3
    token = answer.json()
    assert sorted(token) == ["name", "token"] and token["name"] == "router" and TOKEN.match(token["token"])
    assert node.api("GET", f"/v3/channels/{channel_id}").json()["tokens"] == {**tokens, "router": token["token"]}


def test_a_v3_channel_id_may_be_percent_encoded(node):
    channel_id = f"app:{unique()}@eu"
    assert node.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["web"]}).status == 201
    encoded = channel_id.replace(":", "%3A").replace("@", "%40")
    answer = node.api("GET", f"/v3/channels/{encoded}")
    assert answer.status == 200, answer
    assert answer.json()["channel"] == channel_id
    assert node.api("DELETE", f"/v3/channels/{encoded}").status in (200, 204)
    assert_error(node.api("GET", f"/v3/channels/{channel_id}"), 404)


def test_v3_unknown_channel_is_404(node):
    answer = node.api("GET", f"/v3/channels/{unique()}")
    assert_error(answer, 404)


@pytest.mark.parametrize("body,status", [
    # As logplex's v3: what is not a channel body at all is 400; names it refuses, 422.
    ({"tokens": "a"}, 400),
    ({"tokens": {"a": 1}}, 400),
    ({"tokens": ["has space"]}, 422),
    ({"tokens": ["ok", 3]}, 400),
    ({"tokens": ["x" * 49]}, 422),
    (["a", "b"], 400),
    ("tokens", 400),
    (b"{\"tokens\": [", 400),
    (b"not json at all", 400),
])
def test_v3_put_rejects_bad_bodies_without_creating(node, body, status):
    name = unique()
    assert_error(node.api("PUT", f"/v3/channels/{name}", body), status)
    assert_error(node.api("GET", f"/v3/channels/{name}"), 404)


def test_v3_put_of_a_bad_channel_name_is_422(node):
    assert_error(node.api("PUT", "/v3/channels/bad%20name", {"tokens": []}), 422)
    assert_error(node.api("PUT", "/v3/channels/-starts-with-dash", {"tokens": []}), 422)


def test_v3_put_with_an_empty_body_makes_a_channel_without_tokens(node):
    name = unique()
    answer = node.api("PUT", f"/v3/channels/{name}", NO_BODY)
    assert answer.status == 201, answer
    assert answer.json() == {"channel": name}


# -- sessions -----------------------------------------------------------------------------------
def test_session_for_an_unknown_channel_is_422(node):
    for path in ("/v2/sessions", "/v3/sessions", "/sessions"):
        assert_error(node.api("POST", path, {"channel_id": "999999999"}), 422)
        assert_error(node.api("POST", path, {"channel_id": unique()}), 422)


def test_session_urls(node):
    channel_id, _ = node.channel("app")
    for path in ("/v2/sessions", "/v3/sessions"):
        answer = node.api("POST", path, {"channel_id": channel_id, "num": "10"})
        assert answer.status == 201, answer
        url = answer.json()["url"]
        assert re.fullmatch(rf"http://127\.0\.0\.1:{node.api_port}/sessions/{UUID}", url), url
        assert answer.json() == {"url": url}
        assert answer.header("Location") == url

    answer = node.api("POST", "/sessions", {"channel_id": channel_id})
    assert answer.status == 201, answer
    url = answer.body.decode()
    assert re.fullmatch(rf"http://127\.0\.0\.1:{node.api_port}/sessions/{UUID}", url), url

    v2_id, _ = v2_channel(node, "app")
    answer = node.api("POST", "/v2/sessions", {"channel_id": v2_id})
    assert answer.status == 201, answer

    # Reading a session needs no credential: its URL is the secret.
    path = url.split(str(node.api_port), 1)[1]
    answer = http_request(node.api_port, "GET", path)
    assert answer.status == 200 and answer.body == b"", answer


def test_unknown_session_is_404(node):
    assert_error(http_request(node.api_port, "GET", "/sessions/00000000-0000-4000-8000-000000000000"), 404)


def test_session_body_is_checked(node):
    channel_id, _ = node.channel("app")
    assert_error(node.api("POST", "/v2/sessions", {}), 400)
    assert_error(node.api("POST", "/v2/sessions", [channel_id]), 422)
    assert_error(node.api("POST", "/v2/sessions", {"channel_id": channel_id, "num": "many"}), 422)
    assert_error(node.api("POST", "/v2/sessions", {"channel_id": channel_id, "ps": 3}), 422)
    assert_error(node.api("POST", "/v2/sessions", b"{"), 400)


# -- channel logs -----------------------------------------------------------------------------------
def test_channel_logs_in_logplex_output_format(node):
    channel_id, tokens = node.channel("app", "router")
    sent = [
        syslog_message(tokens["app"], "web.1", "one", sd='[meta sequence="1"]'),
        syslog_message(tokens["router"], "-", "two", pri=158, msgid="MSG2", host="otherhost"),
        syslog_message(tokens["app"], "worker.2", "three"),
        syslog_message(tokens["app"], "web.1", "four \u00e9"),
    ]
    answer = node.post_logs(logplex1(sent), auth=basic(*ADMIN))
    assert answer.status == 204, answer
    expected = [
        f"<134>1 {TS} host app web.1 - one\n".encode(),
        f"<158>1 {TS} host router - - two\n".encode(),
        f"<134>1 {TS} host app worker.2 - three\n".encode(),
        f"<134>1 {TS} host app web.1 - four \u00e9\n".encode(),
    ]

    def logs(num):
        return node.api("GET", f"/v3/channels/{channel_id}/logs?num={num}")

    answer = wait_for(lambda: logs(100), lambda a: a.header("Logplex-Msg-Count") == "4")
    assert answer.status == 200, answer
    assert answer.header("Content-Type") == LOGPLEX1
    assert answer.header("Logplex-Msg-Count") == "4"
    assert decode_logplex1(answer.body) == expected
    for token in tokens.values():
        assert token.encode() not in answer.body

    answer = logs(2)
    assert answer.header("Logplex-Msg-Count") == "2"
    assert decode_logplex1(answer.body) == expected[-2:]


def test_channel_logs_of_an_empty_or_unknown_channel(node):
    channel_id, tokens = node.channel("app")
    answer = node.api("GET", f"/v3/channels/{channel_id}/logs?num=5")
    assert answer.status == 200, answer
    assert answer.header("Logplex-Msg-Count") == "0" and answer.body == b""
    assert_error(node.api("GET", f"/v3/channels/{unique()}/logs"), 404)
    # As logplex: a num that is not a number is ignored, and the default of 100 applies.
    assert node.post_logs(logplex1([syslog_message(tokens["app"], "web.1", "one line")]),
                          auth=basic(*ADMIN)).status == 204
    answer = wait_for(lambda: node.api("GET", f"/v3/channels/{channel_id}/logs?num=lots"),
                      lambda a: a.header("Logplex-Msg-Count") == "1")
    assert answer.status == 200 and answer.header("Logplex-Msg-Count") == "1", answer


def test_channels_are_listed_a_page_at_a_time_with_token_names_and_never_tokens(node):
    prefix = unique("list")
    made = {}
    for i in range(5):
        channel_id = f"{prefix}-{i}"
        answer = node.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["web", "app"] if i % 2 else []})
        made[channel_id] = answer.json().get("tokens", {})
    node.api("POST", f"/v3/channels/{prefix}-1/drains", {"url": "https://logs.example.com/in"})
    seen, after, pages = [], "", 0
    while True:
        answer = node.api("GET", f"/v3/channels?limit=2&after={after}")
        assert answer.status == 200, answer
        page = answer.json()
        assert len(page["channels"]) <= 2
        seen += page["channels"]
        pages += 1
        if page["next"] is None:
            break
        after = page["next"]
    ids = [c["channel"] for c in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    mine = {c["channel"]: c for c in seen if c["channel"].startswith(prefix)}
    assert mine[f"{prefix}-0"] == {"channel": f"{prefix}-0", "tokens": [], "drains": 0}
    assert mine[f"{prefix}-1"] == {"channel": f"{prefix}-1", "tokens": ["app", "web"], "drains": 1}
    listed = json.dumps(seen)
    assert not any(token in listed for tokens in made.values() for token in tokens.values())
    assert pages >= 3


# -- methods and paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [
    ("PATCH", "/v3/channels/some-app"),
    ("POST", "/v3/channels/some-app"),
    ("GET", "/channels"),
    ("PUT", "/v2/channels/1"),
    ("GET", "/v2/sessions"),
    ("POST", "/healthcheck"),
])
def test_wrong_method_on_a_known_path_is_405(node, method, path):
    answer = node.api(method, path, {})
    assert_error(answer, 405)
    assert answer.header("Allow"), answer.headers


@pytest.mark.parametrize("path", ["/", "/nope", "/v2/channels/abc/tokens/x", "/v4/channels/a"])
def test_unknown_path_is_404(node, path):
    assert_error(node.api("GET", path), 404)


def test_sessions_of_flagged_channels_say_so_in_logplexs_words(node, redis):
    """logplex's operators switch tails (no_tail) and history (no_redis) off for a loud app."""
    channel_id, _ = node.channel("app")
    record = json.loads(redis_command(redis, "HGET", "lp:channels", channel_id))
    record["flags"] = ["no_redis", "no_tail"]
    redis_command(redis, "HSET", "lp:channels", channel_id, json.dumps(record))
    redis_command(redis, "INCR", "lp:version")
    redis_command(redis, "PUBLISH", "lp:config", f"channel {channel_id}")
    # The flags are in force once a plain (non-tail) session says so.
    plain = node.session(channel_id).split(str(node.api_port), 1)[1]
    answer = wait_for(lambda: http_request(node.api_port, "GET", plain),
                      lambda a: a.header("X-Heroku-Warning") is not None)
    assert answer.header("X-Heroku-Warning") == "Warning: log history discarded due to excessive volume."
    path = node.session(channel_id, tail=True).split(str(node.api_port), 1)[1]
    answer = http_request(node.api_port, "GET", path)
    assert answer.status == 200, answer
    assert answer.body.endswith(b" Logplex: Error L20 (Tail sessions forbidden) Tail sessions for this app "
                                b"are forbidden due to log volume.\n"), answer.body
