"""The node's API over HTTP(S), with only the standard library: requests, answers, error sentences."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any, NamedTuple

from logplex import __version__
from logplex.admin.cli.failure import API_ERROR, UNREACHABLE, Failure
from logplex.admin.cli.settings import Settings

TIMEOUT = 30.0
CREDENTIAL_HELP = "check --auth, LOGPLEX_AUTH or ~/.netrc"


def origin(parts: urllib.parse.SplitResult) -> str:
    return f"{parts.scheme}://{parts.netloc}"


def connect(parts: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
    """A connected HTTP(S) connection; certificates are verified against the system's CAs."""
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    conn.connect()
    return conn


def reason(e: BaseException) -> str:
    """A short, lower-case account of a network failure."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({e.verify_message})"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed ({e.reason or e})"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the connection closed without an answer"
    if isinstance(e, http.client.IncompleteRead):
        return "the answer was cut short"
    if isinstance(e, http.client.HTTPException):
        return f"not an HTTP answer ({type(e).__name__})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    return str(e) or type(e).__name__


def sentence(text: str) -> str:
    """A server's error sentence fitted into ``logplex: <sentence> (status)``."""
    text = text.strip().rstrip(".")
    first = text.split(" ", 1)[0]
    # "Channel x …" -> "channel x …", "A channel …" -> "a channel …"; "SYSTEM BOOTING" stays.
    if first[:1].isupper() and (first[1:].islower() or first == "A"):
        text = text[0].lower() + text[1:]
    return text


class Answer(NamedTuple):
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    def error_text(self) -> str | None:
        """The API's {"error": …} sentence, or None when the body is not one."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return doc["error"]
        return None


class Api:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = urllib.parse.urlsplit(settings.url)
        self.headers = {"User-Agent": f"logplex-cli/{__version__}", "Accept": "application/json"}
        if settings.auth is not None:
            raw = "{}:{}".format(*settings.auth).encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")

    def request(self, method: str, path: str, doc: Any = None) -> Answer:
        target = self.base.path.rstrip("/") + path
        headers = dict(self.headers)
        body = None
        if doc is not None:
            body = json.dumps(doc).encode()
            headers["Content-Type"] = "application/json"
        conn = None
        try:
            conn = connect(self.base, TIMEOUT)
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            return Answer(response.status, response.reason, response.headers, response.read())
        except (OSError, http.client.HTTPException) as e:
            raise Failure(f"cannot reach {self.settings.url}: {reason(e)}", UNREACHABLE) from None
        finally:
            if conn is not None:
                conn.close()

    def call(self, method: str, path: str, doc: Any = None, *, missing: str | None = None) -> Any:
        """The JSON of a 2xx answer (None when it has no body); an error answer raises Failure.

        missing is what a 404 with an API error body means for this call."""
        answer = self.request(method, path, doc)
        if 200 <= answer.status < 300:
            if not answer.body:
                return None
            try:
                return json.loads(answer.body)
            except ValueError:
                raise Failure(f"{self.settings.url}{path} answered {answer.status} with something "
                              "other than JSON: is it a logplex node?", API_ERROR, answer.status) from None
        raise self.error(answer, path, missing)

    def error(self, answer: Answer, path: str, missing: str | None = None) -> Failure:
        status = answer.status
        text = answer.error_text()
        if status == 401:
            if self.settings.auth is None:
                message = "no credential given (401): use --auth USER:PASSWORD, LOGPLEX_AUTH or ~/.netrc"
            else:
                message = f"authentication failed (401): {CREDENTIAL_HELP}"
            return Failure(message, API_ERROR, status)
        if text is None:
            return Failure(f"{self.settings.url}{path} answered {status} {answer.reason}: is it a logplex node?",
                           API_ERROR, status)
        if status == 404 and missing is not None:
            return Failure(f"{missing} (404)", API_ERROR, status)
        message = f"{sentence(text)} ({status})"
        if status >= 500 and answer.headers.get("Request-Id"):
            message = f"{sentence(text)} ({status}, request id {answer.headers['Request-Id']})"
        return Failure(message, API_ERROR, status)

    def channel_exists(self, channel: str) -> bool | None:
        """Whether the channel exists; None when that cannot be told."""
        try:
            answer = self.request("GET", channel_path(channel))
        except Failure:
            return None
        if answer.status == 200:
            return True
        if answer.status == 404 and answer.error_text() is not None:
            return False
        return None

    def lines(self, url: str, *, tail: bool) -> Iterator[bytes]:
        """The lines of a session, as they arrive; a tail waits for new lines without a time limit.

        The session URL is the capability: no credential is sent with it."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Failure(f'the node answered a session URL that is not one: "{url}"', API_ERROR)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": self.headers["User-Agent"]}
        conn = None
        try:
            conn = connect(parts, TIMEOUT)
            sock = conn.sock
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                answer = Answer(response.status, response.reason, response.headers, response.read())
                if response.status == 404 and answer.error_text() is not None:
                    raise Failure(f"the session expired before it was read ({sentence(answer.error_text())}, 404)",
                                  API_ERROR, 404)
                raise self.error(answer, parts.path)
            if tail:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.settimeout(None)
        except (OSError, http.client.HTTPException) as e:
            if conn is not None:
                conn.close()
            raise Failure(f"cannot reach {origin(parts)}: {reason(e)}", UNREACHABLE) from None
        try:
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise Failure(f"lost the connection to {origin(parts)}: {reason(e)}", UNREACHABLE) from None
                if not line:
                    return
                yield line
        finally:
            response.close()
            conn.close()


def channel_path(channel: str) -> str:
    # The API matches the raw path: ':' and '@' (allowed in channel names) stay as they are.
    return "/v3/channels/" + urllib.parse.quote(channel, safe=":@")
