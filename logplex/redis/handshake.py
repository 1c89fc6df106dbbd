"""One connection to Redis: the endpoint to a host (TCP, or TLS through txredisapi's), and
the handshake (AUTH, SELECT, and ROLE behind Sentinel) done before it joins its pool.

txredisapi's own `username=` AUTH is not used: its `connectionMade` calls
`factory.stopTrying()` when AUTH or SELECT fails, so one failed AUTH during a
password rotation stopped the pool for good. `Handshake` does AUTH itself, and
a refused password is retried with backoff for ever instead.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from logplex.redis.address import RedisAddress, error_reason, tls_options
from logplex.redis.password import secrets_of

log = Logger()

# Replies to AUTH (or to a first command without AUTH) that mean the secret is wrong.
_AUTH_ERRORS = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password",
                "AUTH <password> called without")


def is_auth_error(text: str) -> bool:
    return any(marker in text for marker in _AUTH_ERRORS)


_warned_unverified: set[str] = set()


def host_endpoint(reactor, address: RedisAddress, host: str, port: int, timeout: float):
    """TCP, or TLS through txredisapi's own TLS endpoint, to one host."""
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if not address.tls:
        return endpoint
    if not address.verify and address.describe() not in _warned_unverified:
        _warned_unverified.add(address.describe())
        log.warn("redis_tls_unverified address={address}: ssl_cert_reqs=none, so any server "
                 "certificate is accepted", address=address.describe())
    return txredisapi._TLSEndpoint(endpoint, tls_options(address, host))


class Handshake:
    """AUTH, SELECT and, behind Sentinel, ROLE, done before a connection joins its pool.

    A failure closes the connection and leaves the pool's ClientService to try
    again with backoff, however long the secret stays wrong; txredisapi's own
    handshake would stop the pool for good instead.
    """

    factory: Any
    transport: Any

    def connectionMade(self):
        d = defer.ensureDeferred(self._handshake())
        d.addErrback(lambda f: log.failure("redis_handshake_crashed", f))
        return d

    async def _handshake(self) -> None:
        address: RedisAddress = self.factory.redis_address
        secrets = secrets_of(address)
        reactor = self.factory.redis_reactor
        timeout = self.factory.handshake_timeout
        password = secrets.password_for(address)
        if password is None and address.username:
            secrets.auth_failed(address, f"no password for user {address.username!r} "
                                         "(neither in the URL nor in --redis-password-file)")
            self.transport.loseConnection()
            return
        # txredisapi's connectionMade below must not AUTH or SELECT again.
        self.password, self.dbid = None, None
        try:
            if password is not None:
                args = (address.username, password) if address.username else (password,)
                await self.execute_command("AUTH", *args).addTimeout(timeout, reactor)
            else:
                # Without a password, PING tells "the server wants one" (NOAUTH) now.
                await self.execute_command("PING").addTimeout(timeout, reactor)
            secrets.auth_succeeded(address)
            if address.db:
                await self.execute_command("SELECT", address.db).addTimeout(timeout, reactor)
            if address.is_sentinel:
                role = await self.execute_command("ROLE").addTimeout(timeout, reactor)
                if not role or role[0] != b"master":
                    secrets.handshake_failed(address, f"not the primary (ROLE says {role and role[0]!r})")
                    self.transport.loseConnection()
                    return
        except txredisapi.ResponseError as e:
            reason = str(e).strip()
            if is_auth_error(reason):
                secrets.auth_failed(address, reason)
            else:
                secrets.handshake_failed(address, reason)
            self.transport.loseConnection()
            return
        except Exception as e:
            # A TLS failure shows here as a lost connection: say what TLS said.
            lost = getattr(self, "_lost_reason", None)
            reason = lost.getErrorMessage() if lost is not None else str(e) or e.__class__.__name__
            secrets.handshake_failed(address, reason)
            if self.transport is not None:
                self.transport.abortConnection()
            return
        await super().connectionMade()

    def connectionLost(self, why):
        self._lost_reason = why
        return super().connectionLost(why)

    def replyReceived(self, reply):
        # A primary demoted to replica answers writes with READONLY: leave it
        # and ask the sentinels again rather than fail every write after.
        if (isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("READONLY")
                and self.factory.redis_address.is_sentinel and self.transport is not None):
            log.warn("redis_primary_demoted address={address} action=reconnecting",
                     address=self.factory.redis_address.describe())
            self.transport.loseConnection()
        return super().replyReceived(reply)


class SubscriberProtocol(Handshake, txredisapi.SubscriberProtocol):
    """txredisapi's subscriber with our handshake: for pub/sub factories started with start_connecting."""


def configure_factory(factory: txredisapi.RedisFactory, address: RedisAddress, reactor, timeout: float) -> None:
    """What the handshake reads from a txredisapi factory, and quick reconnects, before it starts connecting."""
    factory.redis_address = address
    factory.redis_reactor = reactor
    factory.handshake_timeout = timeout
    factory.reconnect = True
    # Come back quickly after a Redis restart or failover (txredisapi waits
    # up to 10 s): routing, the bus and drains' spools all wait on these.
    factory.initialDelay = 0.2
    factory.maxDelay = 2.0


@implementer(IStreamClientEndpoint)
class LazyTLSEndpoint:
    """TCP or TLS to one host, reading the TLS files on every attempt (a renewed certificate is used)."""

    def __init__(self, reactor, address: RedisAddress, timeout: float) -> None:
        self.reactor, self.address, self.timeout = reactor, address, timeout

    def connect(self, protocolFactory):
        try:
            endpoint = host_endpoint(self.reactor, self.address, self.address.host, self.address.port,
                                     self.timeout)
        except (OSError, ValueError) as e:
            log.warn("redis_tls_files_unusable address={address} reason={reason}",
                     address=self.address.describe(), reason=error_reason(e))
            return defer.fail(e)
        return endpoint.connect(protocolFactory)
