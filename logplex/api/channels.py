"""Channels and their tokens: v3 (ids the caller names), and logplex's v2/v1 spellings (integer ids)."""

from __future__ import annotations

import heapq

from twisted.logger import Logger

from logplex.api import validate
from logplex.api.schemas import CHANNEL, OK_TEXT, V2_CHANNEL, answer, error, json_content, operation, ref, text, use
from logplex.http.routing import HttpError, Reply, endpoint

log = Logger()

LIST_PARAMS = [
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "string", "default": "100"},
     "description": "Channels per page, a number clamped to 1..1000; anything else is ignored (100)."},
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "The last channel id of the previous page."},
]


def v2_channel_id(channel_id: str):
    """v2 answers carry integer channel ids, as logplex's clients expect."""
    return int(channel_id) if channel_id.isdigit() else channel_id


class Channels:
    def __init__(self, api) -> None:
        # The ManagementApi: its store, backlogs and what its resources share.
        self.api = api

    def routes(self) -> list:
        found = {"200": answer("The channel.", json_content(ref("ChannelV3"))), "404": use("NotFound")}
        return [
            # -- v3 --
            endpoint("GET", "/v3/channels", self.list_v3, operation(
                "listChannels", "A page of channels, in id order, with token names and drain counts", "v3",
                {"200": answer("Up to limit channels after `after`; `next` is the `after` of the next page, "
                               "null on the last.", json_content(ref("ChannelPage")))},
                params=LIST_PARAMS)),
            endpoint("PUT", "/v3/channels/{channel}", self.put_v3, operation(
                "putChannel", "Create or update a channel with exactly these tokens", "v3",
                {"200": answer("Updated; kept names keep their token.", json_content(ref("ChannelV3"))),
                 "201": answer("Created.", json_content(ref("ChannelV3")))},
                body="PutChannelV3Body",
                description="An invalid channel id is 422. An empty body is a channel without tokens."), CHANNEL),
            endpoint("GET", "/v3/channels/{channel}", self.get_v3, operation(
                "getChannel", "Describe a channel", "v3", found), CHANNEL),
            endpoint("DELETE", "/v3/channels/{channel}", self.delete_v3, operation(
                "deleteChannel", "Delete a channel with its tokens, drains and backlog", "v3",
                {"204": answer("Deleted."), "404": use("NotFound")}), CHANNEL),
            endpoint("POST", "/v3/channels/{channel}/tokens", self.add_token_v3, operation(
                "addToken", "Add a token", "v3",
                {"200": answer("The new token (200, as logplex's v3 answers).", json_content(ref("NamedToken"))),
                 "404": use("NotFound")},
                body="TokenBody", body_required=True), CHANNEL),
            # -- v2 / v1 --
            endpoint("POST", "/channels", self.create_v2, operation(
                "createChannelV2", "Create a channel with an integer id", "v2",
                {"201": answer("The channel.", json_content(ref("NewChannelV2"))),
                 "400": error("The body is not JSON, or name is not a string.")},
                body="CreateChannelV2Body")),
            endpoint("GET", "/v2/channels/{channel}", self.get_v2, operation(
                "getChannelV2", "Describe a channel", "v2",
                {"200": answer("The channel.", json_content(ref("ChannelV2"))), "404": use("NotFound")}),
                V2_CHANNEL),
            endpoint("DELETE", "/v2/channels/{channel}", self.delete_v2, operation(
                "deleteChannelV2", "Delete a channel", "v2", {"200": OK_TEXT, "404": use("NotFound")}),
                V2_CHANNEL),
            endpoint("DELETE", "/channels/{channel}", self.delete_v2, operation(
                "deleteChannelV1", "Delete a channel", "v1", {"200": OK_TEXT, "404": use("NotFound")}),
                V2_CHANNEL),
            endpoint("GET", "/channels/{channel}/info", self.info_v1, operation(
                "channelInfoV1", "Describe a channel", "v1",
                {"200": answer("The channel.", json_content(ref("ChannelInfoV1"))), "404": use("NotFound")}),
                V2_CHANNEL),
            endpoint("POST", "/v2/channels/{channel}/tokens", self.add_token_v2, operation(
                "addTokenV2", "Add a token", "v2",
                {"201": answer("The new token.", json_content(ref("NamedToken"))), "404": use("NotFound")},
                body="TokenBody", body_required=True), V2_CHANNEL),
            endpoint("POST", "/channels/{channel}/token", self.add_token_v1, operation(
                "addTokenV1", "Add a token; the token comes back as text", "v1",
                {"201": text("The new token."), "404": use("NotFound")},
                body="TokenBody", body_required=True), V2_CHANNEL),
        ]

    # -- v3 -----------------------------------------------------------------------------------
    def _v3_description(self, channel_id: str) -> dict:
        self.api.channel(channel_id)
        store = self.api.store
        doc = {"channel": channel_id}
        tokens = store.tokens_of(channel_id)
        if tokens:
            doc["tokens"] = {t.name: t.id for t in tokens}
        drains = [d.describe() for d in store.drains_of(channel_id) if d.url]
        if drains:
            doc["drains"] = drains
        return doc

    async def list_v3(self, request) -> Reply:
        """A page of channels in id order, with token names (never tokens) and drain counts."""
        store = self.api.store
        limit = validate.query_number(request, b"limit", 100, 1, 1000)
        after = request.args.get(b"after", [b""])[0].decode("utf-8", "replace")
        # The page's smallest ids, without sorting every channel of a large cluster.
        ids = heapq.nsmallest(limit + 1, (c for c in store.cache.channels if c > after))
        page = [{"channel": channel_id,
                 "tokens": sorted(t.name for t in store.tokens_of(channel_id)),
                 "drains": sum(1 for d in store.drains_of(channel_id) if d.url)}
                for channel_id in ids[:limit]]
        return Reply(200, {"channels": page, "next": ids[limit - 1] if len(ids) > limit else None})

    async def put_v3(self, request, channel_id) -> Reply:
        validate.channel_id(channel_id)
        names = validate.token_names(self.api.body(request, 400).get("tokens"), malformed=400)
        created = await self.api.store.put_channel(channel_id, names)
        if created:
            await self._clear_backlog(channel_id)
        return Reply(201 if created else 200, self._v3_description(channel_id))

    async def get_v3(self, request, channel_id) -> Reply:
        return Reply(200, self._v3_description(channel_id))

    async def delete_v3(self, request, channel_id) -> Reply:
        await self._delete(channel_id)
        return Reply(204)

    async def add_token_v3(self, request, channel_id) -> Reply:
        # logplex's v3: no name is 400, a new token 200.
        name = validate.token_name(self.api.body(request, 400).get("name"), missing=400)
        self.api.channel(channel_id)
        token = await self.api.store.add_token(channel_id, name)
        return Reply(200, {"token": token.id, "name": token.name})

    # -- v2 / v1 ----------------------------------------------------------------------------
    async def create_v2(self, request) -> Reply:
        body = self.api.body(request)
        name = body.get("name", "")
        if not isinstance(name, str):
            raise HttpError(400, "Channel name must be a string.")
        names = validate.token_names(body.get("tokens"))
        channel, tokens = await self.api.store.create_channel_v2(names)
        return Reply(201, {
            "channel_id": v2_channel_id(channel.id),
            "tokens": {t.name: t.id for t in tokens},
        })

    async def get_v2(self, request, channel_id) -> Reply:
        self.api.channel(channel_id)
        store = self.api.store
        return Reply(200, {
            "channel_id": v2_channel_id(channel_id),
            "tokens": [{"name": t.name, "token": t.id} for t in store.tokens_of(channel_id)],
            "drains": [d.describe() for d in store.drains_of(channel_id) if d.url],
        })

    async def delete_v2(self, request, channel_id) -> Reply:
        await self._delete(channel_id)
        return Reply(200, b"OK", content_type=b"text/plain")

    async def info_v1(self, request, channel_id) -> Reply:
        self.api.channel(channel_id)
        store = self.api.store
        return Reply(200, {
            "channel_id": v2_channel_id(channel_id),
            "tokens": {t.name: t.id for t in store.tokens_of(channel_id)},
            "drains": [d.url for d in store.drains_of(channel_id) if d.url],
        })

    async def add_token_v2(self, request, channel_id) -> Reply:
        name = validate.token_name(self.api.body(request).get("name"))
        token = await self.api.store.add_token(self.api.channel(channel_id).id, name)
        return Reply(201, {"name": token.name, "token": token.id})

    async def add_token_v1(self, request, channel_id) -> Reply:
        name = validate.token_name(self.api.body(request).get("name"), missing=400)
        token = await self.api.store.add_token(self.api.channel(channel_id).id, name)
        return Reply(201, token.id.encode(), content_type=b"text/plain")

    # -- deleting ------------------------------------------------------------------------------
    async def _delete(self, channel_id: str) -> None:
        self.api.channel(channel_id)
        await self.api.store.delete_channel(channel_id)
        await self._clear_backlog(channel_id)

    async def _clear_backlog(self, channel_id: str) -> None:
        """Delete a backlog: of a deleted channel, and again when a channel of its name is made
        (a DELETE whose shard was down, or a late write from another node, left it lines)."""
        try:
            await self.api.backlogs.delete(channel_id)
        except Exception as e:
            # The backlog expires by itself; the channel is gone (or made) either way.
            log.warn("backlog_delete_failed channel={channel} error={e}", channel=channel_id, e=repr(e))
