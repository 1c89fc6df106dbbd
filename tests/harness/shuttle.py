"""A log-shuttle work-alike: LogShuttle speaks log-shuttle's dialect of ``POST /logs``, and
``main`` takes its command line (``python3 tests/harness/senders.py log-shuttle ...``).

Standard library only, as tests/harness/senders.py.
"""

from __future__ import annotations

import argparse
import base64
import gzip as gzip_module
import http.client
import os
import ssl
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence

SHUTTLE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


class LogShuttle:
    """A client speaking log-shuttle's dialect of ``POST /logs``.

    log-shuttle (a Go program, not packaged by Debian) reads lines, prefixes
    each with an RFC 5424 header, ``<PRIVAL>1 TIME HOSTNAME APPNAME PROCID
    MSGID`` where its MSGID default ``- -`` also fills STRUCTURED-DATA, and
    POSTs batches of them as ``LEN SP MESSAGE`` frames (the line's LF counted):

    - the body streamed, so ``Transfer-Encoding: chunked`` and no
      Content-Length; ``Content-Encoding: gzip`` with ``-gzip``;
    - ``Content-Type: application/logplex-1``, ``Logplex-Msg-Count``,
      ``X-Request-Id`` (a UUID per batch), ``User-Agent: log-shuttle/…``;
    - Basic auth from the URL's user info; a URL without one gets
      ``token:<appname>``, so ``-appname t.TOKEN`` authenticates too;
    - ``Logplex-Drop-Count`` / ``Logplex-Lost-Count``: lines it dropped (its
      buffer was full) or lost (its posts failed) since the last batch.

    ``bearer`` sends ``Authorization: Bearer <appname>`` instead of Basic (the
    router accepts both; log-shuttle itself only does Basic).
    """

    def __init__(self, logs_url: str, appname: str = "token", *, procid: str = "shuttle",
                 hostname: str = "shuttle", prival: str = "190", msgid: str = "- -",
                 use_gzip: bool = False, bearer: bool = False, skip_verify: bool = False,
                 ca_file: str | None = None, timeout: float = 5.0,
                 version: str = "0.0-logplex-tests") -> None:
        url = urllib.parse.urlsplit(logs_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"-logs-url must be an http(s) URL, not {logs_url!r}")
        self.url = url
        self.appname = appname
        self.procid = procid
        self.hostname = hostname
        self.prival = prival
        self.msgid = msgid
        self.use_gzip = use_gzip
        self.bearer = bearer
        self.skip_verify = skip_verify
        self.ca_file = ca_file
        self.timeout = timeout
        self.user_agent = f"log-shuttle/{version} (python{sys.version_info[0]}.{sys.version_info[1]}; linux)"
        self.dropped = 0
        self.lost = 0
        self.answers: list[tuple[int, dict[str, str], bytes]] = []

    def frame(self, line: bytes, when: float | None = None) -> bytes:
        """``LEN <PRIVAL>1 TIME HOSTNAME APPNAME PROCID MSGID LINE\n``, the LF counted."""
        when = time.time() if when is None else when
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
        stamp += f".{int(when % 1 * 1e6):06d}+00:00"
        header = f"<{self.prival}>1 {stamp} {self.hostname} {self.appname} {self.procid} {self.msgid} "
        header = header.encode()
        message = header + line.rstrip(b"\n") + b"\n"
        return b"%d %s" % (len(message), message)

    def _authorization(self) -> str:
        if self.bearer:
            return f"Bearer {self.appname}"
        if self.url.username is not None:
            user = urllib.parse.unquote(self.url.username)
            password = urllib.parse.unquote(self.url.password or "")
        else:
            user, password = "token", self.appname
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _connection(self) -> http.client.HTTPConnection:
        port = self.url.port
        if self.url.scheme == "https":
            # The system's CAs, or SSL_CERT_FILE's (as Go's crypto/x509 reads them).
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(self.url.hostname, port or 443, timeout=self.timeout,
                                               context=context)
        return http.client.HTTPConnection(self.url.hostname, port or 80, timeout=self.timeout)

    def _chunks(self, frames: list[bytes]) -> Iterator[bytes]:
        if not self.use_gzip:
            yield from frames
            return
        compressor = gzip_module.compress(b"".join(frames))
        for i in range(0, len(compressor), 4096):
            yield compressor[i:i + 4096]

    def post(self, lines: Sequence[bytes | str]) -> int:
        """POST one batch; the HTTP status. Losses reported in it are reset once it is answered."""
        now = time.time()
        frames = [self.frame(line.encode() if isinstance(line, str) else line, now) for line in lines]
        headers = {
            "Content-Type": "application/logplex-1",
            "Logplex-Msg-Count": str(len(frames)),
            "X-Request-Id": str(uuid.uuid4()),
            "User-Agent": self.user_agent,
            "Authorization": self._authorization(),
        }
        if self.use_gzip:
            headers["Content-Encoding"] = "gzip"
        if self.dropped:
            headers["Logplex-Drop-Count"] = str(self.dropped)
        if self.lost:
            headers["Logplex-Lost-Count"] = str(self.lost)
        path = self.url.path or "/"
        if self.url.query:
            path += "?" + self.url.query
        conn = self._connection()
        try:
            conn.request("POST", path, body=self._chunks(frames), headers=headers, encode_chunked=True)
            response = conn.getresponse()
            body = response.read()
        except OSError:
            self.lost += len(frames)
            raise
        finally:
            conn.close()
        self.answers.append((response.status, {k.lower(): v for k, v in response.getheaders()}, body))
        self.dropped = self.lost = 0
        if response.status >= 400:
            # log-shuttle logs the answer and does not retry a 4xx or 5xx.
            print(f"log-shuttle: at=post request_id={headers['X-Request-Id']!r} status={response.status} "
                  f"body={body!r}", file=sys.stderr)
        return response.status


def main(argv: Sequence[str]) -> int:
    """log-shuttle's command line (Go flags: ``-name value``, ``-name=value``, ``--name``)."""
    parser = argparse.ArgumentParser(prog="log-shuttle", prefix_chars="-")

    def flag(name: str, **kwargs) -> None:
        parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kwargs)

    flag("logs-url", default=os.environ.get("LOGS_URL") or os.environ.get("LOGPLEX_URL", ""))
    flag("appname", default="token")
    flag("logplex-token", default=None)
    flag("procid", default="shuttle")
    flag("hostname", default="shuttle")
    flag("prival", default="190")
    flag("msgid", default="- -")
    flag("batch-size", type=int, default=500)
    flag("timeout", default="5s")
    flag("gzip", action="store_true")
    flag("skip-verify", action="store_true")
    flag("verbose", action="store_true")
    # log-shuttle POSTs from this many outlets side by side; this stand-in posts
    # one batch after another, which is what -num-outlets 1 asks for.
    flag("num-outlets", type=int, default=4)
    # Go's flag package takes -name=value for every flag (-gzip=true for a
    # boolean); argparse only --name=value, and booleans without a value.
    booleans = {"gzip", "skip-verify", "verbose"}
    expanded: list[str] = []
    for arg in argv:
        name, sep, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and sep and name in booleans:
            expanded += [f"-{name}"] if value.lower() in ("true", "1", "t") else []
        elif arg.startswith("-") and not arg.startswith("--") and sep:
            expanded += [f"-{name}", value]
        else:
            expanded.append(arg)
    args = parser.parse_args(expanded)
    timeout = float(args.timeout.rstrip("s")) if args.timeout.endswith("s") else float(args.timeout)
    shuttle = LogShuttle(args.logs_url, args.logplex_token or args.appname, procid=args.procid,
                         hostname=args.hostname, prival=args.prival, msgid=args.msgid,
                         use_gzip=args.gzip, skip_verify=args.skip_verify, timeout=timeout)
    batch: list[bytes] = []
    failed = 0
    for line in sys.stdin.buffer:
        batch.append(line)
        if len(batch) >= args.batch_size:
            failed += shuttle.post(batch) >= 400
            batch = []
    if batch:
        failed += shuttle.post(batch) >= 400
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
