"""Where the command connects, and as whom: flags, then the environment, then ~/.netrc."""

from __future__ import annotations

import netrc
import os
import urllib.parse
from collections.abc import Mapping
from typing import NamedTuple

from logplex.admin.cli.failure import usage_error

DEFAULT_URL = "http://localhost:8001"


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
