"""txredisapi connections to a RedisAddress: reconnecting pools, bounded waits, no Redis Cluster.

Every connection keeps values as bytes, answers within a timeout, and does
its own handshake (logplex.redis.handshake) so that a refused password is
retried with backoff for ever instead of ending the pool.

What we take from txredisapi 1.6, and where we go around it:

- its pool (`RedisFactory.startConnecting`: one `ClientService` per slot, with
  backoff) and its TLS endpoint (`_makeEndpoint` wraps `_TLSEndpoint`, whose
  `TLSMemoryBIOFactory` accepts both Twisted's `optionsForClientTLS` creators,
  which check the host name, and old-style `CertificateOptions`);
- its AUTH and its Sentinel are not used: see logplex.redis.handshake and
  logplex.redis.sentinel for why.
"""

from __future__ import annotations

import re

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger

from logplex import hotpath
from logplex.redis.address import RedisAddress
from logplex.redis.handshake import Handshake, LazyTLSEndpoint, configure_factory
from logplex.redis.sentinel import SentinelEndpoint

log = Logger()


class RedisClusterRefused(RuntimeError):
    """A Redis URL that leads to a Redis Cluster node, which logplex does not speak."""


class _Protocol(Handshake, txredisapi.RedisProtocol):
    """txredisapi's protocol with our handshake and a leaner command encoder.

    A backlog flush is one LPUSH of thousands of lines: building it argument
    by argument through txredisapi's general encoder was a quarter of a busy
    node's time. Bytes (nearly every argument here) go straight through.
    """

    def _build_command(self, *args, **kwargs):
        out = [b"*%d\r\n" % len(args)]
        append = out.append
        for arg in args:
            if arg.__class__ is not bytes:
                arg = self._encode_value(arg)
            append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(out)


_pure_build_command = _Protocol._build_command
if (_hot := hotpath.compiled()) is not None:
    # The same encoding in C: a backlog flush is one command of thousands of lines.
    def _compiled_build_command(self, *args, **kwargs):
        return _hot.build_command(args, self._encode_value)

    _Protocol._build_command = _compiled_build_command


class _Factory(txredisapi.RedisFactory):
    protocol = _Protocol


def start_connecting(factory: txredisapi.RedisFactory, address: RedisAddress, reactor=None,
                     timeout: float = 5.0) -> None:
    """Start a txredisapi factory (whose protocol has our handshake) on the address's endpoint."""
    if reactor is None:
        from twisted.internet import reactor
    configure_factory(factory, address, reactor, timeout)
    if address.path:
        endpoint = UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    elif address.is_sentinel:
        endpoint = SentinelEndpoint(reactor, address, factory, timeout)
    else:
        endpoint = LazyTLSEndpoint(reactor, address, timeout)
    factory.startConnecting(endpoint)


def connect(address: RedisAddress, *, poolsize: int = 2, reply_timeout: float = 5.0, reactor=None):
    """A lazy, reconnecting pool; commands answer within reply_timeout or fail."""
    handler = txredisapi.UnixConnectionHandler if address.path else txredisapi.ConnectionHandler
    factory = _Factory(
        address.describe(), None, poolsize, True, handler, None, None, reply_timeout, False,
    )
    start_connecting(factory, address, reactor, timeout=reply_timeout)
    return factory.handler


async def refuse_cluster_mode(pool, address: RedisAddress, timeout: float, reactor) -> None:
    """RedisClusterRefused if the Redis behind pool runs in cluster mode (INFO cluster says so)."""
    try:
        info = await bounded(pool.execute_command("INFO", "cluster"), timeout, reactor)
    except txredisapi.ResponseError as e:
        # An ACL user without +info: the check cannot be made, and says so.
        log.warn("redis_cluster_check_skipped address={address} reason={reason}",
                 address=address.describe(), reason=str(e).strip())
        return
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    if re.search(r"^cluster_enabled:1\s*$", info or "", re.M):
        raise RedisClusterRefused(
            f"Redis at {address.describe()} runs in cluster mode (cluster_enabled:1): logplex does "
            "not speak Redis Cluster. Give it standalone Redis servers (or Sentinel-managed "
            "primaries) as config and shard Redis; logplex spreads channels over shards itself.")


def bounded(d: defer.Deferred, seconds: float, reactor) -> defer.Deferred:
    """txredisapi waits for a connection without limit while Redis is down: bound it."""
    return d.addTimeout(seconds, reactor)
