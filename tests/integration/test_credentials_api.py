"""Credentials through the API: created with a secret shown once, listed without it, deleted."""

import pytest




def test_a_new_credential_works_at_once_with_exactly_its_grants(node):
    created = node.api("POST", "/v3/credentials", {"perms": ["any_channel"], "note": "shuttle"})
    assert created.status == 201, created
    cred = created.json()
    assert cred["perms"] == ["any_channel"] and cred["note"] == "shuttle" and len(cred["secret"]) > 20
    # any_channel alone: no management API.
    assert node.api("GET", "/v3/nodes", auth=(cred["id"], cred["secret"])).status == 403
    listed = node.api("GET", "/v3/credentials").json()
    assert {"id": cred["id"], "perms": ["any_channel"], "note": "shuttle"} in listed
    assert all("secret" not in c and "hash" not in c for c in listed)
    assert node.api("DELETE", f"/v3/credentials/{cred['id']}").status == 204
    assert node.api("GET", "/v3/nodes", auth=(cred["id"], cred["secret"])).status == 401
    assert node.api("DELETE", f"/v3/credentials/{cred['id']}").status == 404


@pytest.mark.parametrize("body", [{"perms": []}, {"perms": ["root"]}, {"perms": "full_api"},
                                  {"perms": [{"x": 1}]}, {"note": 7}])
def test_bad_credential_requests_are_422(node, body):
    answer = node.api("POST", "/v3/credentials", body)
    assert answer.status == 422, answer
    assert "error" in answer.json()


def test_nodes_lists_this_node(node):
    answer = node.api("GET", "/v3/nodes")
    assert answer.status == 200
    (me,) = [n for n in answer.json() if n["api_url"] == node.api_url]
    assert me["version"] and me["uptime"] >= 0


def test_a_read_channel_credential_names_its_channels_and_manages_nothing(node):
    channel, _ = node.channel("app")
    made = node.api("POST", "/v3/credentials", {"perms": ["read_channel"], "channels": [channel]})
    assert made.status == 201, made
    cred = made.json()
    assert cred["perms"] == ["read_channel"] and cred["channels"] == [channel]
    assert node.api("GET", f"/v3/channels/{channel}", auth=(cred["id"], cred["secret"])).status == 403
    for body in ({"perms": ["read_channel"]}, {"perms": ["full_api"], "channels": [channel]},
                 {"perms": ["read_channel"], "channels": "x"}):
        assert node.api("POST", "/v3/credentials", body).status == 422
