"""Redis pub/sub subscriptions that survive reconnects: the change feed and the cluster bus."""

from __future__ import annotations

from typing import Callable, Iterable

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex.redis.address import RedisAddress
from logplex.redis.connection import start_connecting
from logplex.redis.handshake import SubscriberProtocol

log = Logger()


class _Protocol(SubscriberProtocol):
    def connectionMade(self):
        d = super().connectionMade()
        # Redis forgets subscriptions with the connection: restore them every time.
        self.whenConnected().addCallback(self.factory.subscription._connected)
        return d

    def messageReceived(self, pattern, channel, message):
        self.factory.subscription._message(channel, message)


class _Factory(txredisapi.RedisFactory):
    protocol = _Protocol


class Subscription:
    """A reconnecting subscriber to a set of pub/sub channels.

    on_connected runs after every (re)subscription: a reconnect means messages
    were missed, and the owner decides how to catch up.
    """

    def __init__(
        self,
        address: RedisAddress,
        on_message: Callable[[bytes, bytes], None],
        on_connected: Callable[[], None] = lambda: None,
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._address = address
        self._on_message = on_message
        self._on_connected = on_connected
        self._channels: set[bytes] = set()
        self._protocol: _Protocol | None = None
        self._factory: _Factory | None = None
        self._catch_up_waiters: list[defer.Deferred] = []
        self._pinging = False

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.connected

    def start(self) -> None:
        address = self._address
        # AUTH, SELECT and the endpoint (TLS, Sentinel) come from the address.
        factory = _Factory(None, None, 1, isLazy=True, charset=None, convertNumbers=False)
        factory.subscription = self
        # Reconnects quickly: while this is down, tails on other nodes and the
        # change feed are blind.
        start_connecting(factory, address, self._reactor, timeout=5)
        self._factory = factory

    def stop(self):
        self._protocol = None
        if self._factory is not None:
            factory, self._factory = self._factory, None
            return factory.disconnect()
        return None

    def subscribe(self, channels: Iterable[bytes]) -> None:
        new = [c for c in channels if c not in self._channels]
        self._channels.update(new)
        if new and self.connected:
            self._protocol.subscribe(new).addErrback(self._failed, "subscribe")

    def unsubscribe(self, channels: Iterable[bytes]) -> None:
        gone = [c for c in channels if c in self._channels]
        self._channels.difference_update(gone)
        if gone and self.connected:
            self._protocol.unsubscribe(gone).addErrback(self._failed, "unsubscribe")

    def caught_up(self, timeout: float) -> defer.Deferred:
        """Fires once every message Redis published to this subscriber before this call has
        been handled: a PING through this connection, which Redis answers after them.

        Never fails: while not connected (messages are being missed, and on_connected
        will catch up) or without an answer within `timeout` seconds, it fires all the
        same. A call made while a PING is out waits for the next one, which leaves
        after it; every call made meanwhile shares that one.
        """
        waiter = defer.Deferred()
        self._catch_up_waiters.append(waiter)
        if not self._pinging:
            self._ping(timeout)
        return waiter

    def _ping(self, timeout: float) -> None:
        waiters, self._catch_up_waiters = self._catch_up_waiters, []
        self._pinging = True
        if not self.connected:
            d = defer.succeed(None)
        else:
            d = self._protocol.ping()
            d.addTimeout(timeout, self._reactor)

        def done(result):
            if isinstance(result, Failure):
                log.info("redis_subscription_ping_failed error={err!r}", err=result.getErrorMessage())
            self._pinging = False
            for waiter in waiters:
                waiter.callback(None)
            if self._catch_up_waiters:
                self._ping(timeout)

        d.addBoth(done)

    def _connected(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        if self._channels:
            protocol.subscribe(sorted(self._channels)).addErrback(self._failed, "subscribe")
        try:
            self._on_connected()
        except Exception:
            log.failure("subscription_on_connected_failed")

    def _message(self, channel: bytes, message: bytes) -> None:
        try:
            self._on_message(channel, message)
        except Exception:
            log.failure("subscription_handler_failed channel={channel!r}", channel=channel)

    def _failed(self, failure, what):
        log.warn("redis_subscription_failed command={what} error={err!r}", what=what, err=failure.getErrorMessage())
