"""A throwaway certificate authority for TLS tests: a CA, certificates it issues, and Twisted TLS options for both ends.

Everything is made at test time in a directory the test owns, so no key
material lives in the repository and nothing outlives the test.

    ca = TestCA(directory)
    issued = ca.issue(["localhost"])                  # also valid for 127.0.0.1
    expired = ca.issue(["localhost"], expired=True)
    wrong_host = ca.issue([WRONG_HOSTNAME], ips=[])   # valid, but not for localhost
    stranger = TestCA(directory, name="unrelated CA")  # a client trusting it rejects ``issued``
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

# A name no test server answers to: issue a certificate for it to get one
# that is valid and trusted but presented by the wrong host.
WRONG_HOSTNAME = "not-this-host.invalid"

_HOUR = datetime.timedelta(hours=1)
_DAY = datetime.timedelta(days=1)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: str, data: bytes) -> str:
    # Keys are secrets even in tests: nobody else on the machine reads them.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "cert"


@attrs.frozen
class Issued:
    """A server certificate issued by a TestCA: its files and their PEM text.

    ``chain_path`` holds the certificate followed by the CA's, as a server
    presents them; ``ca_path`` the issuing CA's alone.
    """

    hostnames: tuple[str, ...]
    ips: tuple[str, ...]
    cert_path: str
    key_path: str
    chain_path: str
    pem_cert: bytes
    pem_key: bytes
    pem_chain: bytes
    ca_path: str
    pem_ca: bytes
    not_valid_after: datetime.datetime


class TestCA:
    """A self-signed EC P-256 certificate authority whose files live in ``directory``.

    Two CAs may share a directory if their names differ.
    """

    # Not a test class, though the name starts with "Test"; keeps pytest from
    # trying to collect it where it is imported.
    __test__ = False

    def __init__(self, directory: str, name: str = "logplex test CA") -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.name = name
        self._prefix = os.path.join(directory, _slug(name))
        if os.path.exists(self._prefix + "-ca.pem"):
            raise ValueError(
                f"{directory!r} already holds a CA named {name!r}; give this one "
                "another name or another directory."
            )
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            # Wider than any leaf, so an expired leaf is the only thing wrong.
            .not_valid_before(now - 3 * _DAY)
            .not_valid_after(now + 2 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.pem_cert = self._cert.public_bytes(serialization.Encoding.PEM)
        _write(self._prefix + "-ca.pem", self.pem_cert)
        self._issued = 0

    @property
    def ca_path(self) -> str:
        """The CA certificate in PEM, for a client's trust store (e.g. ``--drain-ca``)."""
        return self._prefix + "-ca.pem"

    @property
    def trust_root(self) -> Certificate:
        """The CA certificate as Twisted's ``trustRoot`` for optionsForClientTLS."""
        return Certificate.loadPEM(self.pem_cert)

    def issue(self, hostnames: Sequence[str], ips: Sequence[str] = ("127.0.0.1",),
              expired: bool = False) -> Issued:
        """A server certificate for the DNS names ``hostnames`` and IP addresses ``ips``.

        It is valid from an hour ago for a day; with ``expired`` it ran out a
        day ago instead.
        """
        hostnames, ips = tuple(hostnames), tuple(ips)
        if not hostnames and not ips:
            raise ValueError("a certificate needs at least one host name or IP address.")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            not_before, not_after = now - 2 * _DAY, now - _DAY
        else:
            not_before, not_after = now - _HOUR, now + _DAY
        names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        common_name = (hostnames or ips)[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                       ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self._issued += 1
        base = f"{self._prefix}-{self._issued:02d}-{_slug(common_name)}"
        if expired:
            base += "-expired"
        pem_cert = cert.public_bytes(serialization.Encoding.PEM)
        pem_key = _pem_key(key)
        pem_chain = pem_cert + self.pem_cert
        return Issued(
            hostnames=hostnames,
            ips=ips,
            cert_path=_write(base + ".pem", pem_cert),
            key_path=_write(base + ".key", pem_key),
            chain_path=_write(base + "-chain.pem", pem_chain),
            pem_cert=pem_cert,
            pem_key=pem_key,
            pem_chain=pem_chain,
            ca_path=self.ca_path,
            pem_ca=self.pem_cert,
            not_valid_after=not_after,
        )


def server_context(issued: Issued) -> CertificateOptions:
    """TLS 1.2+ options to listen with, presenting ``issued`` and its CA."""
    # cryptography objects, not pyOpenSSL ones: CertificateOptions hands them
    # to pyOpenSSL as they are, and pyOpenSSL deprecates its own types.
    return CertificateOptions(
        privateKey=serialization.load_pem_private_key(issued.pem_key, password=None),
        certificate=x509.load_pem_x509_certificate(issued.pem_cert),
        extraCertChain=[x509.load_pem_x509_certificate(issued.pem_ca)],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


def client_creator(ca: TestCA, hostname: str) -> IOpenSSLClientConnectionCreator:
    """Client TLS options that trust only ``ca`` and expect ``hostname`` (a DNS name or IP)."""
    return optionsForClientTLS(hostname, trustRoot=ca.trust_root)


@implementer(IPolicyForHTTPS)
class TrustOnly:
    """An HTTPS policy for ``Agent(reactor, contextFactory=...)`` that trusts only ``ca``."""

    def __init__(self, ca: TestCA) -> None:
        self._ca = ca

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return client_creator(self._ca, hostname.decode("ascii"))


def endpoint_description(issued: Issued, port: int, interface: str = "127.0.0.1") -> str:
    """A Twisted ``ssl:`` server endpoint string presenting ``issued`` (and its CA) on ``port``.

    Paths are quoted, so a directory with ``:`` or ``\\`` in it still parses.
    """
    # extraCertChain is the CAs alone: Twisted reads the leaf from certKey.
    parts = [
        "ssl", str(port),
        "interface=" + quoteStringArgument(interface),
        "privateKey=" + quoteStringArgument(issued.key_path),
        "certKey=" + quoteStringArgument(issued.cert_path),
        "extraCertChain=" + quoteStringArgument(issued.ca_path),
    ]
    return ":".join(parts)
