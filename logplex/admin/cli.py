"""``logplex``: manage channels, tokens, drains and credentials, and read logs, through a node's API.

Only the standard library: the client runs anywhere Python does, without Twisted.

Where it connects: ``--url``, else ``LOGPLEX_URL``, else http://localhost:8001.
The credential: ``--auth USER:PASSWORD``, else ``LOGPLEX_AUTH``, else the
``~/.netrc`` entry of the URL's host (login and password; the file must be
private to its owner).

Exit codes: 0 done; 1 the API refused (its answer was an error, authentication
included); 2 bad usage (arguments, ``--auth``, the URL, ``~/.netrc``); 3 the
node could not be reached, or the connection broke; 130 interrupted by Ctrl-C,
except ``logs -t``, which Ctrl-C ends normally (0). A closed standard output
(``| head``) ends a command quietly with 0.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import netrc
import os
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from logplex import __version__

DEFAULT_URL = "http://localhost:8001"
TIMEOUT = 30.0

OK = 0
API_ERROR = 1
USAGE = 2
UNREACHABLE = 3
INTERRUPTED = 130

PERMISSIONS = ("full_api", "any_channel", "read_channel")
CREDENTIAL_HELP = "check --auth, LOGPLEX_AUTH or ~/.netrc"


class Failure(Exception):
    """Ends the command: ``logplex: <message>`` on stderr, and code as the exit status."""

    def __init__(self, message: str, code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def usage_error(message: str) -> Failure:
    return Failure(message, USAGE)


# -- where to connect, and as whom --------------------------------------------------------------
class Settings(NamedTuple):
    url: str  # the base URL, without a trailing slash
    auth: tuple[str, str] | None
    auth_from: str  # "--auth", "LOGPLEX_AUTH", "~/.netrc" or "" (none)


def check_url(url: str, source: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage_error(f'{source}: "{url}" is not an http:// or https:// URL')
    try:
        parts.port
    except ValueError:
        raise usage_error(f'{source}: "{url}" has a bad port') from None
    if parts.username is not None or parts.password is not None:
        raise usage_error(f"{source}: give the credential with --auth, LOGPLEX_AUTH or ~/.netrc, not in the URL")
    if parts.query or parts.fragment:
        raise usage_error(f'{source}: "{url}" must be a base URL, without a query or fragment')
    return url.rstrip("/")


def parse_auth(value: str, source: str) -> tuple[str, str]:
    user, colon, password = value.partition(":")
    if not colon or not user:
        raise usage_error(f"{source} must be USER:PASSWORD")
    return user, password


def netrc_auth(host: str, home: str) -> tuple[str, str] | None:
    """The login and password ~/.netrc holds for host (or its default entry), if any."""
    path = os.path.join(home, ".netrc")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise usage_error(f"cannot read {path}: {e.strerror}") from None
    if os.name == "posix" and (st.st_uid != os.getuid() or st.st_mode & 0o077):
        raise usage_error(f"{path} holds passwords, so it must be yours and private: chmod 600 {path}")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except netrc.NetrcParseError as e:
        raise usage_error(f"cannot parse {path}: {e.msg} (line {e.lineno})") from None
    except OSError as e:
        raise usage_error(f"cannot read {path}: {e.strerror}") from None
    if entry is None or not entry[0]:
        return None
    login, _account, password = entry
    return login, password or ""


def resolve(url_flag: str | None, auth_flag: str | None, environ: Mapping[str, str]) -> Settings:
    """URL and credential: flags, then the environment, then ~/.netrc (credential) or the default URL."""
    if url_flag is not None:
        url = check_url(url_flag, "--url")
    elif environ.get("LOGPLEX_URL"):
        url = check_url(environ["LOGPLEX_URL"], "LOGPLEX_URL")
    else:
        url = DEFAULT_URL
    if auth_flag is not None:
        return Settings(url, parse_auth(auth_flag, "--auth"), "--auth")
    if environ.get("LOGPLEX_AUTH"):
        return Settings(url, parse_auth(environ["LOGPLEX_AUTH"], "LOGPLEX_AUTH"), "LOGPLEX_AUTH")
    home = environ.get("HOME") or os.path.expanduser("~")
    host = urllib.parse.urlsplit(url).hostname or ""
    found = netrc_auth(host, home)
    if found is not None:
        return Settings(url, found, "~/.netrc")
    return Settings(url, None, "")


# -- HTTP ----------------------------------------------------------------------------------------
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


# -- output --------------------------------------------------------------------------------------
def table(rows: Iterable[Iterable[Any]], header: Iterable[str] | None = None) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return []
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(row, widths)] + row[-1:]).rstrip() for row in cells]


def fields(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """``key:  value`` lines, the values aligned."""
    pairs = [(f"{k}:", "-" if v is None else str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs]


def utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def channel_lines(doc: dict) -> list[str]:
    tokens = sorted((doc.get("tokens") or {}).items())
    drains = sorted((d["id"], d.get("url") or "") for d in doc.get("drains") or [])
    lines = [f"channel: {doc.get('channel')}"]
    lines += ["tokens:", *("  " + line for line in table(tokens))] if tokens else ["tokens: none"]
    lines += ["drains:", *("  " + line for line in table(drains))] if drains else ["drains: none"]
    return lines


STATE_FIELDS = ("delivered", "dropped", "retried", "buffered", "spool_depth", "holding_senders")


def drain_lines(doc: dict) -> list[str]:
    pairs = [("id", doc.get("id")), ("url", doc.get("url")), ("token", doc.get("token"))]
    if "state" in doc:
        state = doc["state"]
        if state is None:
            pairs.append(("state", "not running on this node"))
        else:
            pairs += [(k.replace("_", " "), state.get(k)) for k in STATE_FIELDS if k in state]
            error = state.get("last_error")
            if error is not None and state.get("last_error_at") is not None:
                error = f"{error} (at {utc(state['last_error_at'])})"
            pairs.append(("last error", error))
            shown = set(STATE_FIELDS) | {"last_error", "last_error_at"}
            pairs += [(k.replace("_", " "), v) for k, v in state.items() if k not in shown]
    return fields(pairs)


# -- the commands --------------------------------------------------------------------------------
class Cli:
    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.json = getattr(args, "json", False)
        self.settings = resolve(getattr(args, "url", None), getattr(args, "auth", None), environ)
        self.api = Api(self.settings)
        # Ctrl-C is how a tail ends: then it is not an interruption.
        self.ctrl_c_is_the_end = False

    def out(self, lines: Iterable[str]) -> None:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def show(self, doc: Any, human: Callable[[], Iterable[str]]) -> None:
        """The API's JSON with --json ({} for an answer without a body), else the human lines."""
        if self.json:
            self.out([json.dumps({} if doc is None else doc, indent=2)])
        else:
            self.out(human())

    # channels
    def channels_create(self) -> None:
        name = self.args.name
        if self.api.channel_exists(name):
            raise Failure(f'channel "{name}" already exists: "logplex tokens add" adds a token to it', API_ERROR)
        doc = self.api.call("PUT", channel_path(name), {"tokens": self.args.tokens or []})
        self.show(doc, lambda: channel_lines(doc))

    def channels_list(self) -> None:
        channels: list[dict] = []
        after = None
        while True:  # every page, in channel id order
            query = urllib.parse.urlencode({"limit": 500, **({"after": after} if after else {})})
            page = self.api.call("GET", "/v3/channels?" + query)
            channels += page["channels"]
            after = page.get("next")
            if not after:
                break
        rows = ((c["channel"], ",".join(c.get("tokens") or []) or "-", c.get("drains", 0)) for c in channels)
        self.show({"channels": channels}, lambda: table(rows, ("CHANNEL", "TOKENS", "DRAINS")))

    def channels_show(self) -> None:
        name = self.args.name
        doc = self.api.call("GET", channel_path(name), missing=f'channel "{name}" does not exist')
        self.show(doc, lambda: channel_lines(doc))

    def channels_delete(self) -> None:
        name = self.args.name
        doc = self.api.call("DELETE", channel_path(name), missing=f'channel "{name}" does not exist')
        self.show(doc, lambda: [f'deleted channel "{name}"'])

    # tokens
    def tokens_add(self) -> None:
        channel = self.args.channel
        doc = self.api.call("POST", channel_path(channel) + "/tokens", {"name": self.args.name},
                            missing=f'channel "{channel}" does not exist')
        self.show(doc, lambda: table([(doc["name"], doc["token"])]))

    # drains
    def _drain_call(self, method: str, doc: Any = None) -> Any:
        channel, drain_id = self.args.channel, self.args.id
        try:
            return self.api.call(method, f"{channel_path(channel)}/drains/{drain_id}", doc)
        except Failure as f:
            # A 404 is either: ask which.
            if f.status == 404 and self.api.channel_exists(channel) is False:
                raise Failure(f'channel "{channel}" does not exist (404)', API_ERROR, 404) from None
            if f.status == 404:
                raise Failure(f'channel "{channel}" has no drain {drain_id} (404)', API_ERROR, 404) from None
            raise

    def drains_add(self) -> None:
        channel = self.args.channel
        doc = self.api.call("POST", channel_path(channel) + "/drains", {"url": self.args.drain_url},
                            missing=f'channel "{channel}" does not exist')
        self.show(doc, lambda: drain_lines(doc))

    def drains_list(self) -> None:
        # The API has no list of drains: they are part of the channel's description.
        channel = self.args.channel
        doc = self.api.call("GET", channel_path(channel), missing=f'channel "{channel}" does not exist')
        drains = sorted(doc.get("drains") or [], key=lambda d: d["id"])
        self.show(drains, lambda: table((d["id"], d.get("url") or "") for d in drains))

    def drains_show(self) -> None:
        doc = self._drain_call("GET")
        self.show(doc, lambda: drain_lines(doc))

    def drains_remove(self) -> None:
        doc = self._drain_call("DELETE")
        self.show(doc, lambda: [f'removed drain {self.args.id} from channel "{self.args.channel}"'])

    # logs
    def logs(self) -> None:
        if self.json:
            raise usage_error("--json does not apply to logs: it prints the log lines as they are")
        channel = self.args.channel
        request = {"channel_id": channel, "num": self.args.num, "tail": self.args.tail}
        if self.args.ps:
            request["ps"] = self.args.ps
        if self.args.source:
            request["source"] = self.args.source
        try:
            doc = self.api.call("POST", "/v2/sessions", request)
        except Failure as f:
            # An unknown channel is a 422 here, as in logplex: tell it apart from other 422s.
            if f.status == 422 and self.api.channel_exists(channel) is False:
                raise Failure(f'channel "{channel}" does not exist (404)', API_ERROR, 404) from None
            raise
        if not isinstance(doc, dict) or not isinstance(doc.get("url"), str):
            raise Failure("the node answered a session without a URL", API_ERROR)
        self.ctrl_c_is_the_end = self.args.tail
        stdout = getattr(sys.stdout, "buffer", None)
        for line in self.api.lines(doc["url"], tail=self.args.tail):
            if stdout is not None:
                stdout.write(line)
                stdout.flush()
            else:
                sys.stdout.write(line.decode("utf-8", "replace"))
                sys.stdout.flush()

    # credentials
    def creds_create(self) -> None:
        request: dict[str, Any] = {}
        if self.args.perms:
            request["perms"] = sorted(set(self.args.perms))
        channels = sorted(set(self.args.channels or []))
        if ("read_channel" in (self.args.perms or [])) != bool(channels):
            raise usage_error("--perm read_channel needs --channel CHANNEL (repeatable), "
                              "and --channel needs --perm read_channel")
        if channels:
            request["channels"] = channels
        if self.args.note is not None:
            request["note"] = self.args.note
        doc = self.api.call("POST", "/v3/credentials", request)

        def human() -> list[str]:
            pairs = [("id", doc["id"]), ("secret", doc["secret"]), ("perms", ",".join(doc["perms"]))]
            if doc.get("channels"):
                pairs.append(("channels", ",".join(doc["channels"])))
            return fields(pairs + [("note", doc.get("note") or "")])

        self.show(doc, human)

    def creds_list(self) -> None:
        docs = self.api.call("GET", "/v3/credentials")
        rows = ((c["id"], ",".join(c["perms"]), ",".join(c.get("channels") or []) or "-", c.get("note") or "")
                for c in docs)
        self.show(docs, lambda: table(rows, ("ID", "PERMS", "CHANNELS", "NOTE")))

    def creds_delete(self) -> None:
        cred_id = self.args.id
        doc = self.api.call("DELETE", "/v3/credentials/" + urllib.parse.quote(cred_id, safe="@"),
                            missing=f'credential "{cred_id}" does not exist')
        self.show(doc, lambda: [f'deleted credential "{cred_id}"'])

    # nodes
    def nodes(self) -> None:
        docs = self.api.call("GET", "/v3/nodes")
        rows = ((n.get("node"), n.get("version"), duration(n.get("uptime") or 0), n.get("pid") or "-",
                 n.get("api_url") or "-") for n in docs)
        self.show(docs, lambda: table(rows, ("NODE", "VERSION", "UPTIME", "PID", "API URL")))


# -- arguments -----------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """Usage errors as one line, raised (main prints them and exits 2)."""

    def error(self, message: str):
        raise usage_error(f'{message}; see "{self.prog} --help"')


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f'"{text}" is not a whole number')
    return int(text)


EPILOG = """\
connection: --url, else LOGPLEX_URL, else http://localhost:8001; credential:
--auth, else LOGPLEX_AUTH, else the ~/.netrc entry of the URL's host.
exit codes: 0 done, 1 the API refused, 2 bad usage, 3 node unreachable or
connection lost, 130 Ctrl-C (logs -t: 0)."""


def parser() -> Parser:
    # The global options work before or after the command: every level knows them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="the node's API (env LOGPLEX_URL; default http://localhost:8001)")
    common.add_argument("--auth", default=argparse.SUPPRESS, metavar="USER:PASSWORD",
                        help="API credential (env LOGPLEX_AUTH, else ~/.netrc)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of text")

    top = Parser(prog="logplex", parents=[common], description="Manage a logplex cluster and read its logs.",
                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"logplex {__version__}")
    top.set_defaults(handler=None, group=top)
    commands = top.add_subparsers(title="commands", metavar="COMMAND")

    def group(name: str, help: str) -> argparse._SubParsersAction:
        p = commands.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=None, group=p)
        return p.add_subparsers(title="actions", metavar="ACTION")

    def leaf(actions, name: str, handler: Callable[[Cli], None], help: str) -> Parser:
        p = actions.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    channels = group("channels", "list, create, show and delete channels")
    leaf(channels, "list", Cli.channels_list, "every channel, with its token names and drain count")
    p = leaf(channels, "create", Cli.channels_create, "create a channel (refused if it exists)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--token", dest="tokens", action="append", metavar="NAME",
                   help="a token to create with it (repeatable)")
    p = leaf(channels, "show", Cli.channels_show, "a channel, its tokens and drains")
    p.add_argument("name", metavar="NAME")
    p = leaf(channels, "delete", Cli.channels_delete, "delete a channel, its tokens, drains and backlog")
    p.add_argument("name", metavar="NAME")

    tokens = group("tokens", "add tokens to channels")
    p = leaf(tokens, "add", Cli.tokens_add, "add a token; prints its name and value")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("name", metavar="NAME")

    drains = group("drains", "add, list, show and remove a channel's drains")
    p = leaf(drains, "add", Cli.drains_add, "add a drain (http://, https://, syslog://, syslog+tls://)")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("drain_url", metavar="URL")
    p = leaf(drains, "list", Cli.drains_list, "a channel's drains: id and URL")
    p.add_argument("channel", metavar="CHANNEL")
    p = leaf(drains, "show", Cli.drains_show, "a drain, with this node's delivery state")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("id", metavar="ID", type=count)
    p = leaf(drains, "remove", Cli.drains_remove, "remove a drain")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("id", metavar="ID", type=count)

    p = commands.add_parser("logs", parents=[common], help="a channel's recent lines; -t keeps streaming",
                            description="Print a channel's recent lines, oldest first; with -t, then its "
                                        "live lines until Ctrl-C.")
    p.set_defaults(handler=Cli.logs)
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("-n", "--num", type=count, default=100, help="how many recent lines (default 100)")
    p.add_argument("-t", "--tail", action="store_true", help="keep streaming live lines")
    p.add_argument("-p", "--ps", help='only this process ("web" matches web.1, web.2 …)')
    p.add_argument("-s", "--source", help="only this source (the token's name)")

    creds = group("creds", "API credentials")
    p = leaf(creds, "create", Cli.creds_create, "create a credential; its secret is shown only now")
    p.add_argument("--perm", dest="perms", action="append", choices=PERMISSIONS,
                   help="a permission (repeatable; default full_api)")
    p.add_argument("--channel", dest="channels", action="append", metavar="CHANNEL",
                   help="a channel a read_channel credential may read (repeatable)")
    p.add_argument("--note", help="what the credential is for")
    leaf(creds, "list", Cli.creds_list, "the credentials (without secrets)")
    p = leaf(creds, "delete", Cli.creds_delete, "delete a credential")
    p.add_argument("id", metavar="ID")

    p = commands.add_parser("nodes", parents=[common], help="the cluster's live nodes")
    p.set_defaults(handler=Cli.nodes)
    return top


def parse(argv: list[str]) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.handler is None:
        if argv:
            args.group.error("a command is missing" if args.group is p else "an action is missing")
        p.print_help(sys.stderr)
        raise Failure("", USAGE)
    return args


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    cli = None
    try:
        try:
            args = parse(argv)
            cli = Cli(args, environ)
            args.handler(cli)
            return OK
        except KeyboardInterrupt:
            return OK if cli is not None and cli.ctrl_c_is_the_end else INTERRUPTED
        except BrokenPipeError:
            # The reader left (| head): stop quietly, and keep the exit-time flush quiet too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return OK
    except Failure as f:
        if f.message:
            sys.stderr.write(f"logplex: {f.message}\n")
            sys.stderr.flush()
        return f.code
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
