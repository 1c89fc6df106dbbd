"""Tests for logplex.api.openapi: the document is built from the route table that serves it."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate as validate_openapi
from twisted.internet import defer

from logplex.api import openapi
from logplex.api.app import ManagementApi
from logplex.api.tailpage import TailPage
from logplex.http.routing import Dispatcher, Reply, endpoint, route
from tests.helpers import changed_settings


def served_routes(**api_settings) -> list:
    """The API listener's table, as the node builds it: the API's routes and the tail page's."""
    api = ManagementApi(None, None, None, None, None, changed_settings(api=api_settings), api_url=lambda: "http://x",
                        reactor=None)
    return api.resource(extra_routes=TailPage(api).routes()).routes


def served_document() -> dict:
    (own,) = [r for r in served_routes() if r.path == openapi.OPENAPI_PATH]
    results = []
    defer.ensureDeferred(own.handler(None)).addBoth(results.append)
    return json.loads(results[0].body)


@pytest.mark.parametrize("metrics_auth", [False, True])
def test_every_route_served_is_documented_once(metrics_auth):
    routes = served_routes(metrics_auth=metrics_auth)
    served = [(r.method.decode().lower(), r.path) for r in routes]
    assert None not in {path for _, path in served}, "a route without an OpenAPI operation is served"
    assert len(served) == len(set(served)), "a route is declared twice"
    paths = served_document()["paths"]
    documented = {(method, path) for path, item in paths.items() for method in item}
    assert documented == set(served)


def test_the_tail_page_the_stream_and_the_operations_routes_are_documented():
    paths = served_document()["paths"]
    for path in ("/tail", "/tail/static/{name}", "/tail/channels", "/v3/channels/{channel}/stream",
                 "/healthcheck", "/v3/healthcheck", "/metrics", "/v3/nodes", openapi.OPENAPI_PATH):
        assert "get" in paths[path], path


def test_the_served_document_is_valid_openapi_with_unique_operation_ids():
    doc = served_document()
    validate_openapi(doc)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_a_path_parameter_is_documented_with_the_route_that_matches_it():
    (stream,) = [r for r in served_routes() if r.path == "/v3/channels/{channel}/stream"]
    assert stream.pattern.match("/v3/channels/my-app/stream").groups() == ("my-app",)
    assert not stream.pattern.match("/v3/channels/a/b/stream")
    params = served_document()["paths"]["/v3/channels/{channel}/stream"]["get"]["parameters"]
    assert [p["name"] for p in params if p["in"] == "path"] == ["channel"]


async def _ok(request):
    return Reply(200)


def test_an_undocumented_route_cannot_be_put_in_the_document():
    with pytest.raises(ValueError, match="carries no OpenAPI operation"):
        openapi.document([route("GET", "/hidden", _ok)])


def test_a_route_declared_twice_is_refused():
    doc = {"operationId": "x", "responses": {}}
    with pytest.raises(ValueError, match="GET /twice"):
        Dispatcher([endpoint("GET", "/twice", _ok, doc), endpoint("GET", "/twice", _ok, doc)])


def test_a_path_must_name_exactly_its_parameters():
    with pytest.raises(ValueError):
        endpoint("GET", "/things/{thing}", _ok, {})
