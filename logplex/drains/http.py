"""HTTP(S) drains: a batch is one POST of an application/logplex-1 body to an endpoint the node does not trust.

Every drain endpoint is a tenant's choice, so what it answers is read as
hostile: at most ANSWER_BYTES of a body are kept (the rest is not read: the
connection is dropped), nothing is decompressed, no redirect is followed, no
cookie is stored or sent, and --http-drain-timeout bounds the whole exchange
(connect, send, headers and body), not only the wait for headers.

The POST goes through a client of the node's own (logplex.drains.httpclient,
with logplex.drains.http1 reading answers), not through twisted.web's Agent
nor treq: they cost several times as much per POST, and treq wraps every
request in a CookieAgent (one jar for the whole node) and a
ContentDecoderAgent (gzip), with no way to turn either off.

This module makes the node's client (its connections, their endpoints and
TLS policy) and tells what an answer means for the batch.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import DNSLookupError
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from logplex import __version__
from logplex.drains.formats import http_body
from logplex.drains.http1 import Answer, printable
from logplex.drains.httpclient import (
    HOST_CONNECTIONS, DrainConnections, DrainHttpClient, DrainTarget, ExchangeTimeout,
)
from logplex.drains.netpolicy import resolved_only_private
from logplex.drains.policy import Outcome, parse_retry_after
from logplex.drains.ticker import DrainTicker
from logplex.model import Drain

# 408 Request Timeout and 429 Too Many Requests are the receiver asking for
# a retry; so is every 5xx. Any other 4xx says the batch itself is refused.
RETRY_STATUSES = {408, 429}
# How late a request timeout (or the idle connections' sweep) may fire:
# they share one reactor timer on this grid.
TIMEOUT_RESOLUTION = 0.05
# Endpoints kept for reuse (a TLS one holds its context), one per host:port.
ENDPOINTS_CACHED = 4096

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@implementer(IPolicyForHTTPS)
class TrustRootPolicy:
    """Verify servers against a given CA bundle (a private CA, or the tests')."""

    def __init__(self, trust_root) -> None:
        self.trust_root = trust_root

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trust_root)


def load_trust_root(ca_file: str | None):
    """None for the platform's trust store, else every CA certificate in the PEM file ca_file."""
    if not ca_file:
        return None
    with open(ca_file, "rb") as f:
        pems = _PEM_CERTIFICATE.findall(f.read())
    if not pems:
        raise ValueError(f"--drain-ca-file {ca_file} holds no PEM certificate "
                         "(-----BEGIN CERTIFICATE----- ...): give a file of one or more CA certificates.")
    return trustRootFromCertificates([Certificate.loadPEM(pem) for pem in pems])


def make_client(reactor, trust_root=None, connect_timeout: float = 10.0,
                per_host: int = HOST_CONNECTIONS) -> DrainHttpClient:
    """The node's one HTTP client for every HTTP drain: per endpoint host, `per_host` persistent connections."""
    # Request timeouts and the idle connections' sweep: one reactor timer for all.
    timers = DrainTicker(reactor, resolution=TIMEOUT_RESOLUTION)
    policy = TrustRootPolicy(trust_root) if trust_root is not None else BrowserLikePolicyForHTTPS()
    # Every connection a host's gate lets open is kept for the next request:
    # with fewer kept than may be open, most requests would pay a connect.
    connections = DrainConnections(DrainEndpoints(reactor, policy, connect_timeout), timers, kept=per_host)
    return DrainHttpClient(connections, timers, per_host=per_host)


class DrainEndpoints:
    """Where the drains' connections are made: TCP for http, TLS over it (verified) for https."""

    def __init__(self, reactor, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self.reactor = reactor
        self.policy = policy
        self.connect_timeout = connect_timeout
        # Made anew, an https endpoint builds a TLS context each time. The
        # address check stays per connection: a HostnameEndpoint resolves
        # (through the node's refusing resolver) at every connect.
        self._endpoints: dict[tuple[bytes, bytes, int], object] = {}

    def endpoint(self, key: tuple[bytes, bytes, int]):
        """The endpoint of (scheme, host, port), a DrainTarget's key."""
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= ENDPOINTS_CACHED:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = self._endpoint(*key)
        return endpoint

    def _endpoint(self, scheme: bytes, host: bytes, port: int):
        endpoint = HostnameEndpoint(self.reactor, host.decode("ascii"), port, timeout=self.connect_timeout)
        if scheme == b"https":
            return wrapClientTLS(self.policy.creatorForNetloc(host, port), endpoint)
        if scheme != b"http":
            raise SchemeNotSupported(f"an HTTP drain is http:// or https://, not {scheme!r}")
        return endpoint


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
        return (f"{host} resolves only to addresses that are not public (loopback, private, "
                "link-local, shared or reserved), which this node does not send drains to")
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(str(getattr(r, "value", r)) for r in reasons)
    return failure.getErrorMessage() or failure.type.__name__


class HttpDrainTransport:
    """Delivers a drain's batches to its HTTP(S) endpoint and says what became of each."""

    def __init__(self, drain: Drain, client: DrainHttpClient, reactor, timeout: float) -> None:
        self.drain = drain
        self.client = client
        self.reactor = reactor
        self.timeout = timeout
        parts = urlsplit(drain.url)
        headers = {
            b"Content-Type": [b"application/logplex-1"],
            b"Logplex-Drain-Token": [drain.token.encode()],
            b"User-Agent": [b"Logplex/" + __version__.encode()],
            # Whatever the endpoint does with it, an answer is never inflated here.
            b"Accept-Encoding": [b"identity"],
        }
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers[b"Authorization"] = [b"Basic " + base64.b64encode(credentials)]
        # The query string is kept; the user:password goes into the header only.
        netloc = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        # The API takes printable ASCII only; a URL stored otherwise is percent-encoded.
        self.url = quote(url, safe="/:?#[]@!$&'()*+,;=%~").encode("ascii")
        self.host = parts.hostname
        # Parsed and encoded once; it also says which connections the drain
        # shares: those of every drain on the same host:port.
        self.target = DrainTarget.of(self.url, headers)
        self.host_key = self.target.key
        # The worker has one batch in flight at a time.
        self._pending: defer.Deferred | None = None
        self._stopping = False

    def send(self, messages: list[bytes], frame_id: str) -> defer.Deferred:
        body, count = http_body(messages)
        if not count:
            return defer.succeed(Outcome.ok())
        d = self._pending = self.client.post(self.target, self.target.request(body, count, frame_id),
                                             self.timeout)
        return d.addCallbacks(self._classify, self._failed)

    def _classify(self, answer: Answer) -> Outcome:
        self._pending = None
        code = answer.code
        if 200 <= code < 300:
            return Outcome.ok()
        error = f"HTTP {code} from the drain endpoint"
        if 300 <= code < 400:
            # Following it would send the batch (and the drain token) where
            # the drain does not point, past the address checks.
            location = printable((answer.header(b"location") or b"").decode("latin-1"))
            error += (": redirects are not followed; point the drain at the URL it redirects to"
                      + (f" ({location})" if location else ""))
            return Outcome.retry_later(error)
        excerpt = answer.excerpt()
        if excerpt:
            error += f": {excerpt}"
        if code in RETRY_STATUSES or code >= 500:
            retry_after = parse_retry_after(answer.header(b"retry-after"), self.reactor.seconds())
            return Outcome.retry_later(error, retry_after)
        return Outcome.rejected(error)

    def _failed(self, failure) -> Outcome:
        self._pending = None
        if failure.check(defer.CancelledError) and self._stopping:
            return Outcome.retry_later("stopped")
        if failure.check(ExchangeTimeout):
            return Outcome.retry_later(str(failure.value))
        if is_certificate_error(failure):
            return Outcome.retry_later(describe(failure, self.host), certificate_error=True)
        return Outcome.retry_later(describe(failure, self.host))

    def stop(self) -> defer.Deferred:
        self._stopping = True
        if self._pending is not None:
            self._pending.cancel()
        return defer.succeed(None)
