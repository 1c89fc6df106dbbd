"""A node whose listeners speak TLS, and the clients that reach it: an RSA certificate, HTTPS calls, ALPN.

The certificate is RSA on purpose: only an RSA key makes static-RSA key
exchange (and the CBC-SHA1 suites that come with it) possible at all, so
only an RSA listener shows whether the node refuses them.

    pki = RsaPki(directory)
    proc = HttpsNodeProcess(directory, redis_url, pki, ["--logs", pki.endpoint(port)])
    proc.start()
    answer = https_request(proc.api_port, pki, "GET", "/healthcheck")
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.endpoints import quoteStringArgument

from tests.harness.client import ADMIN, NO_BODY, Answer, basic
from tests.harness.procs import NodeProcess

HOST = "localhost"


def _write(path: str, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


class RsaPki:
    """An RSA CA and one RSA server certificate it issued for localhost and 127.0.0.1, as files in directory."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logplex RSA test CA")])
        ca = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_path = _write(os.path.join(directory, "rsa-ca.pem"), ca.public_bytes(serialization.Encoding.PEM))
        self.cert_path = _write(os.path.join(directory, "rsa-server.pem"),
                                leaf.public_bytes(serialization.Encoding.PEM))
        self.key_path = _write(os.path.join(directory, "rsa-server.key"), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        # What Chromium's --ignore-certificate-errors-spki-list takes: this key, and no other, is trusted.
        self.spki_sha256 = base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def endpoint(self, port: int, interface: str = "127.0.0.1") -> str:
        """An ssl: endpoint description presenting the server certificate (and the CA) on port."""
        return ":".join([
            "ssl", str(port), "interface=" + quoteStringArgument(interface),
            "privateKey=" + quoteStringArgument(self.key_path),
            "certKey=" + quoteStringArgument(self.cert_path),
            "extraCertChain=" + quoteStringArgument(self.ca_path),
        ])

    def client(self, alpn: Sequence[str] | None = None) -> ssl.SSLContext:
        """A client context that trusts only this CA, offering alpn when given."""
        context = ssl.create_default_context(cafile=self.ca_path)
        if alpn is not None:
            context.set_alpn_protocols(list(alpn))
        return context


class HttpsNodeProcess(NodeProcess):
    """A node whose API is an ssl: listener presenting pki's certificate; the health check goes over HTTPS."""

    def __init__(self, tmpdir: str, redis_url: str | None, pki: RsaPki, extra_args: Sequence[str] = (),
                 name: str | None = None) -> None:
        self.pki = pki
        super().__init__(tmpdir, redis_url, extra_args, name)

    @property
    def api_url(self) -> str:
        return f"https://{HOST}:{self.api_port}"

    def command(self) -> list[str]:
        args = super().command()
        # The base command's --api is plain TCP: the next --api wins.
        return [*args, "--api", self.pki.endpoint(self.api_port)]

    def healthy(self) -> bool:
        # Over TLS, trusting the test CA. (No ALPN: the tests, not the start, are what try it.)
        try:
            with urllib.request.urlopen(f"{self.api_url}/healthcheck", timeout=2,
                                        context=self.pki.client()) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


def https_request(port: int, pki: RsaPki, method: str, path: str, body: Any = NO_BODY,
                  headers: dict[str, str] | None = None, *, auth: tuple[str, str] | None = ADMIN,
                  alpn: Sequence[str] | None = ("http/1.1",)) -> Answer:
    """One HTTPS request on a fresh connection offering alpn; dict/list bodies go as JSON."""
    headers = dict(headers or {})
    if auth is not None:
        headers.setdefault("Authorization", basic(*auth))
    data = None
    if isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    elif body is not NO_BODY:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=pki.client(alpn))
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return Answer(response, response.read())
    finally:
        conn.close()


def tls_connect(port: int, pki: RsaPki, alpn: Sequence[str] | None) -> ssl.SSLSocket:
    """A TLS connection to localhost:port that trusts pki's CA and offers alpn; the caller closes it."""
    raw = socket.create_connection((HOST, port), timeout=5)
    try:
        return pki.client(alpn).wrap_socket(raw, server_hostname=HOST)
    except BaseException:
        raw.close()
        raise
