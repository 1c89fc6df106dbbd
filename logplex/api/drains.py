"""A channel's drains: add, reserve, point at a URL, describe (with this node's delivery state), delete."""

from __future__ import annotations

from logplex.api import validate
from logplex.api.schemas import (
    CHANNEL,
    DRAIN,
    LOCATION,
    OK_TEXT,
    V2_CHANNEL,
    answer,
    error,
    json_content,
    operation,
    ref,
    use,
)
from logplex.http.routing import HttpError, Reply, endpoint

REFUSED_URL = error("A refused URL (not a public address, UDP), or the channel already has --max-drains drains.")


class Drains:
    def __init__(self, api) -> None:
        # The ManagementApi: its store, drain_state, settings and what its resources share.
        self.api = api

    def routes(self) -> list:
        def drain(status: str) -> dict:
            return {status: answer("The drain.", json_content(ref("Drain"))), "404": use("NotFound"),
                    "409": use("Conflict")}

        return [
            # -- v3 --
            endpoint("POST", "/v3/channels/{channel}/drains", self.add_v3, operation(
                "addDrain", "Add a drain, or reserve one (no url)", "v3",
                {"201": answer("The drain.", json_content(ref("NewDrainV3")), LOCATION),
                 "404": use("NotFound"), "409": use("Conflict"), "422": REFUSED_URL},
                body="NewDrainV3Body"), CHANNEL),
            endpoint("GET", "/v3/channels/{channel}/drains/{drain}", self.get_v3, operation(
                "getDrain", "Describe a drain, with this node's delivery state", "v3",
                {"200": answer("The drain.", json_content(ref("DrainWithState"))), "404": use("NotFound")}),
                CHANNEL, DRAIN),
            endpoint("PUT", "/v3/channels/{channel}/drains/{drain}", self.put_v3, operation(
                "putDrain", "Set a drain's URL", "v3", drain("200"), body="DrainUrlBody", body_required=True),
                CHANNEL, DRAIN),
            endpoint("DELETE", "/v3/channels/{channel}/drains/{drain}", self.delete_v3, operation(
                "deleteDrain", "Delete a drain (and its spool)", "v3",
                {"204": answer("Deleted."), "404": use("NotFound")}), CHANNEL, DRAIN),
            # -- v2 / v1 --
            endpoint("POST", "/v2/channels/{channel}/drains", self.add_v2, operation(
                "addDrainV2", "Add a drain", "v2", {**drain("201"), "422": REFUSED_URL},
                body="DrainUrlBody", body_required=True), V2_CHANNEL),
            endpoint("POST", "/channels/{channel}/drains/tokens", self.reserve_v1, operation(
                "reserveDrainV1", "Reserve a drain: an id and a token, the URL later", "v1",
                {"201": answer("The reservation.", json_content(ref("DrainReservationV1"))),
                 "404": use("NotFound"),
                 "422": error("The channel already has --max-drains drains.")}), V2_CHANNEL),
            endpoint("POST", "/v2/channels/{channel}/drains/{drain}", self.set_url_v2, operation(
                "setDrainUrlV2", "Set a (reserved) drain's URL", "v2", drain("201"),
                body="DrainUrlBody", body_required=True), V2_CHANNEL, DRAIN),
            endpoint("DELETE", "/v2/channels/{channel}/drains/{drain}", self.delete_v2, operation(
                "deleteDrainV2", "Delete a drain", "v2", {"200": OK_TEXT, "404": use("NotFound")}),
                V2_CHANNEL, DRAIN),
        ]

    def _drain(self, channel_id: str, drain_id: str):
        self.api.channel(channel_id)
        drain = self.api.store.cache.channel_drains.get(channel_id, {}).get(int(drain_id))
        if drain is None:
            raise HttpError(404, f"Channel {channel_id} has no drain {drain_id}.")
        return drain

    def _url(self, body: dict, required: bool, malformed: int = 422) -> str | None:
        url = body.get("url")
        if url is None and not required:
            return None
        return validate.drain_url(url, self.api.allow_private_drains, malformed)

    def _location(self, channel_id: str, drain_id: int) -> dict:
        return {b"location": f"{self.api.api_url}/v3/channels/{channel_id}/drains/{drain_id}".encode()}

    # -- v3 -----------------------------------------------------------------------------------
    async def add_v3(self, request, channel_id) -> Reply:
        self.api.channel(channel_id)
        url = self._url(self.api.body(request, 400), required=False, malformed=400)
        drain = await self.api.store.add_drain(channel_id, url)
        doc = {"id": drain.id, "token": drain.token}
        if url:
            doc["url"] = url
        return Reply(201, doc, self._location(channel_id, drain.id))

    async def get_v3(self, request, channel_id, drain_id) -> Reply:
        drain = self._drain(channel_id, drain_id)
        doc = drain.describe()
        # Delivery figures are this node's: each node delivers what it ingested.
        doc["state"] = self.api.drain_state(drain.id)
        return Reply(200, doc)

    async def put_v3(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        url = self._url(self.api.body(request, 400), required=True, malformed=400)
        drain = await self.api.store.set_drain_url(channel_id, int(drain_id), url)
        return Reply(200, drain.describe())

    async def delete_v3(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        await self.api.store.delete_drain(channel_id, int(drain_id))
        return Reply(204)

    # -- v2 / v1 ----------------------------------------------------------------------------
    async def add_v2(self, request, channel_id) -> Reply:
        self.api.channel(channel_id)
        url = self._url(self.api.body(request), required=True)
        drain = await self.api.store.add_drain(channel_id, url)
        return Reply(201, drain.describe())

    async def reserve_v1(self, request, channel_id) -> Reply:
        self.api.channel(channel_id)
        drain = await self.api.store.add_drain(channel_id, None)
        return Reply(201, {"id": drain.id, "token": drain.token,
                           "msg": "Successfully reserved drain token"})

    async def set_url_v2(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        url = self._url(self.api.body(request), required=True)
        drain = await self.api.store.set_drain_url(channel_id, int(drain_id), url)
        return Reply(201, drain.describe())

    async def delete_v2(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        await self.api.store.delete_drain(channel_id, int(drain_id))
        return Reply(200, b"OK", content_type=b"text/plain")
