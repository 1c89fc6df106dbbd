"""HTTP(S) drains: a batch is one POST of an application/logplex-1 body, through treq."""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit

from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.error import DNSLookupError
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from logplex import __version__
from logplex.drains.core import Outcome, http_body, parse_retry_after
from logplex.drains.resolver import resolved_only_private
from logplex.model import Drain

# 408 Request Timeout and 429 Too Many Requests are the receiver asking for
# a retry; so is every 5xx. Any other 4xx says the batch itself is refused.
RETRY_STATUSES = {408, 429}


@implementer(IPolicyForHTTPS)
class TrustRootPolicy:
    """Verify servers against a given CA bundle (a private CA, or the tests')."""

    def __init__(self, trust_root) -> None:
        self.trust_root = trust_root

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trust_root)


def load_trust_root(ca_file: str | None):
    """None for the platform's trust store, else the certificates in ca_file."""
    if not ca_file:
        return None
    with open(ca_file, "rb") as f:
        return Certificate.loadPEM(f.read())


def make_client(reactor, trust_root=None, connect_timeout: float = 10.0) -> HTTPClient:
    """The node's one HTTP client for every HTTP drain: persistent, pooled connections."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    pool.cachedConnectionTimeout = 120
    pool.retryAutomatically = False  # a retry is ours to make, under the same frame id
    policy = TrustRootPolicy(trust_root) if trust_root is not None else BrowserLikePolicyForHTTPS()
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=connect_timeout))


def is_certificate_error(failure) -> bool:
    """Whether a connection failure is the receiver's certificate failing verification."""
    if failure.check(DNSLookupError):
        return False  # its text names the "hostname", but no certificate was seen
    reasons = getattr(failure.value, "reasons", None) or [failure]
    for reason in reasons:
        value = getattr(reason, "value", reason)
        if isinstance(value, SSL.Error):
            return True
        text = str(value).lower()
        if "certificate" in text or "verif" in text or "hostname" in text:
            return True
    return False


def describe(failure, host: str | None = None) -> str:
    if failure.check(DNSLookupError) and resolved_only_private(host):
        return (f"{host} resolves only to loopback, link-local or private addresses, "
                "which this node does not send drains to")
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(str(getattr(r, "value", r)) for r in reasons)
    return failure.getErrorMessage() or failure.type.__name__


class HttpDrainTransport:
    def __init__(self, drain: Drain, client: HTTPClient, reactor, timeout: float = 30.0) -> None:
        self.drain = drain
        self.client = client
        self.reactor = reactor
        self.timeout = timeout
        parts = urlsplit(drain.url)
        self.headers = {
            b"Content-Type": [b"application/logplex-1"],
            b"Logplex-Drain-Token": [drain.token.encode()],
            b"User-Agent": [b"Logplex/" + __version__.encode()],
        }
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.headers[b"Authorization"] = [b"Basic " + base64.b64encode(credentials)]
        # The query string is kept; the user:password goes into the header only.
        netloc = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self.host = parts.hostname
        self._pending: set[defer.Deferred] = set()

    def send(self, messages: list[bytes], frame_id: str) -> defer.Deferred:
        body, count = http_body(messages)
        if not count:
            return defer.succeed(Outcome.ok())
        headers = dict(self.headers)
        headers[b"Logplex-Msg-Count"] = [str(count).encode()]
        headers[b"Logplex-Frame-Id"] = [frame_id.encode()]
        d = self.client.post(self.url, data=body, headers=headers, timeout=self.timeout)
        d.addCallbacks(self._answered, self._failed)
        self._pending.add(d)
        d.addBoth(self._forget, d)
        return d

    def _forget(self, result, d):
        self._pending.discard(d)
        return result

    def _answered(self, response):
        # Read the body whatever it is: an unread body never gives its
        # connection back to the pool.
        d = response.content()
        d.addErrback(lambda _: b"")
        return d.addCallback(lambda _: self._classify(response))

    def _classify(self, response) -> Outcome:
        code = response.code
        if 200 <= code < 300:
            return Outcome.ok()
        error = f"HTTP {code} from the drain endpoint"
        if code in RETRY_STATUSES or code >= 500:
            retry_after = parse_retry_after(
                response.headers.getRawHeaders(b"retry-after", [None])[0], self.reactor.seconds())
            return Outcome.retry_later(error, retry_after)
        return Outcome.rejected(error)

    def _failed(self, failure) -> Outcome:
        if failure.check(defer.CancelledError) and not self._pending:
            return Outcome.retry_later("stopped")
        if is_certificate_error(failure):
            return Outcome.retry_later(describe(failure, self.host), certificate_error=True)
        if failure.check(defer.TimeoutError, defer.CancelledError):
            return Outcome.retry_later(f"no answer within {self.timeout:g} s")
        return Outcome.retry_later(describe(failure, self.host))

    def stop(self) -> defer.Deferred:
        for d in list(self._pending):
            d.cancel()
        return defer.succeed(None)
