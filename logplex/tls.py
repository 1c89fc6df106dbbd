"""The TLS policy of every listener: TLS 1.2+, forward-secret AEAD suites only, ALPN that never fails a handshake.

A listener's key and certificate come from its `ssl:` endpoint description,
as Twisted parses it; `ServerTLS` serves them under this policy:

- Mozilla's "intermediate" profile: ECDHE (or DHE, when the description
  names dhParameters=) with AES-GCM or ChaCha20-Poly1305 on TLS 1.2, and
  the TLS 1.3 suites (all AEAD). No static-RSA key exchange, no CBC, no
  SHA-1 MACs.
- ALPN: the protocol is picked from what the listener's factory says it
  speaks (IProtocolNegotiationFactory). When the client offers nothing the
  factory speaks (a syslog sender offering anything, a client offering only
  h2) the handshake goes on without ALPN, as a server without ALPN support
  would answer. Twisted 26's own callback answers such a client with an
  internal-error alert, and it cannot see through a wrapping factory.
"""

from __future__ import annotations

from collections.abc import Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolNegotiationFactory
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

MINIMUM_VERSION = SSL.TLS1_2_VERSION
# Mozilla intermediate (v5.7), TLS 1.2: key exchange with forward secrecy, AEAD only.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
])
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def choose_protocol(spoken: Sequence[bytes], offered: Sequence[bytes]) -> bytes | None:
    """The first protocol the listener speaks that the client offered, or None (go on without ALPN)."""
    for protocol in spoken:
        if protocol in offered:
            return protocol
    return None


def spoken_protocols(connection: SSL.Connection) -> list[bytes]:
    """What the listener behind this TLS connection speaks, asked of the factory TLS wraps."""
    tls_protocol = connection.get_app_data()
    factory = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
    negotiating = IProtocolNegotiationFactory(factory, None)
    return list(negotiating.acceptableProtocols()) if negotiating is not None else []


def _select_alpn(connection: SSL.Connection, offered: list[bytes]):
    try:
        chosen = choose_protocol(spoken_protocols(connection), offered)
    except Exception:
        # A failure here would end the handshake with an internal error:
        # carry on without a protocol instead, and say why in the log.
        log.failure("alpn_select_failed")
        chosen = None
    return SSL.NO_OVERLAPPING_PROTOCOLS if chosen is None else chosen


def apply_policy(context: SSL.Context) -> SSL.Context:
    """The listener policy set on an OpenSSL context (minimum version, suites, ALPN); the context."""
    context.set_min_proto_version(MINIMUM_VERSION)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    if hasattr(context, "set_tls13_ciphersuites"):  # pyOpenSSL 25+; OpenSSL's own TLS 1.3 list is the same
        context.set_tls13_ciphersuites(TLS13_SUITES.encode("ascii"))
    # Replaces the callback Twisted installed (the last one set wins).
    context.set_alpn_select_callback(_select_alpn)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """A listener's key and certificate (as Twisted parsed them from its description) under the node's policy."""

    def __init__(self, options: CertificateOptions) -> None:
        if options.method not in (SSL.SSLv23_METHOD, SSL.TLS_METHOD, SSL.TLS_SERVER_METHOD):
            raise ValueError(
                "sslmethod= is not supported on a logplex listener: every TLS listener speaks "
                "TLS 1.2 and 1.3. Remove sslmethod= from the endpoint description.")
        # Built once, now: a key that does not match its certificate stops the
        # node at start rather than failing every handshake.
        self.context = apply_policy(options.getContext())

    def serverConnectionForTLS(self, tls_protocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)
