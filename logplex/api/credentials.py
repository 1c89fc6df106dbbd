"""API and log-input credentials: create (the secret shown once), list (without secrets), delete."""

from __future__ import annotations

from logplex.api import validate
from logplex.api.schemas import CREDENTIAL, answer, error, json_content, operation, ref, use
from logplex.http.routing import HttpError, Reply, endpoint
from logplex.model import FULL_API, PERMISSIONS, READ_CHANNEL


def describe_credential(cred) -> dict:
    doc = {"id": cred.id, "perms": sorted(cred.perms), "note": cred.note}
    if cred.channels:
        doc["channels"] = sorted(cred.channels)
    return doc


class Credentials:
    def __init__(self, api) -> None:
        # The ManagementApi: its store and what its resources share.
        self.api = api

    def routes(self) -> list:
        return [
            endpoint("POST", "/v3/credentials", self.create, operation(
                "createCredential", "Create a credential; its secret is shown this once", "credentials",
                {"201": answer("The credential and its secret.", json_content(ref("NewCredential"))),
                 "404": error("A channel named in 'channels' does not exist.")},
                body="CredentialBody")),
            endpoint("GET", "/v3/credentials", self.list, operation(
                "listCredentials", "List the credentials (without secrets)", "credentials",
                {"200": answer("Every credential.", json_content({"type": "array", "items": ref("Credential")}))})),
            endpoint("DELETE", "/v3/credentials/{credential}", self.delete, operation(
                "deleteCredential", "Delete a credential", "credentials",
                {"204": answer("Deleted."), "404": use("NotFound")}), CREDENTIAL),
        ]

    async def create(self, request) -> Reply:
        store = self.api.store
        body = self.api.body(request)
        perms = body.get("perms", [FULL_API])
        if not isinstance(perms, list) or not perms or not all(isinstance(p, str) and p in PERMISSIONS for p in perms):
            raise HttpError(422, "'perms' must be a non-empty list of: " + ", ".join(sorted(PERMISSIONS)) + ".")
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > 200:
            raise HttpError(422, "'note' must be a string of at most 200 characters.")
        channels = body.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise HttpError(422, "'channels' must be a list of channel ids.")
        # What cannot be a channel id names no channel, and is not worth asking Redis about.
        channels = [validate.channel_id(c) for c in channels]
        if (READ_CHANNEL in perms) != bool(channels):
            raise HttpError(422, "A read_channel credential names its channels, and only it does.")
        # A grant names a channel that exists: its identity, not only its name.
        granted = []
        for channel_id in sorted(set(channels)):
            if store.channel(channel_id) is None:
                # Perhaps just made on another node: ask the config Redis, not only the cache.
                await store.refresh_channel(channel_id)
            channel = store.channel(channel_id)
            if channel is None:
                raise HttpError(404, f"Channel {channel_id} does not exist: make it before granting it.")
            granted.append(channel)
        cred, secret = await store.create_credential(perms, note, channels=granted)
        # The only time the secret is shown: only its hash is kept.
        return Reply(201, {**describe_credential(cred), "secret": secret})

    async def list(self, request) -> Reply:
        creds = self.api.store.cache.creds
        return Reply(200, [describe_credential(c) for c in sorted(creds.values(), key=lambda c: c.id)])

    async def delete(self, request, cred_id) -> Reply:
        if cred_id not in self.api.store.cache.creds:
            raise HttpError(404, f"Credential {cred_id} does not exist.")
        await self.api.store.delete_credential(cred_id)
        return Reply(204)
