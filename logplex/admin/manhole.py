"""The admin shell: a Python manhole over SSH, keys only, with logplex's admin helpers in scope."""

from __future__ import annotations

import os
import pprint
import textwrap

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import portal
from twisted.internet import defer
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from zope.interface import implementer

from logplex.listen import description_fields, has_argument
from logplex.model import CHANNEL_FLAGS, FULL_API, PERMISSIONS


# Where a TCP endpoint takes its interface as a positional field (after the
# port): tcp:PORT:INTERFACE, tcp6:PORT:BACKLOG:INTERFACE.
_INTERFACE_POSITION = {"tcp": 1, "tcp6": 2}
LOOPBACK = {"tcp": "127.0.0.1", "tcp6": "::1"}
MANHOLE_TYPES = ("tcp", "tcp6", "unix")


def loopback_only(description: str) -> str:
    """A tcp: or tcp6: endpoint (in any case) that names no interface binds to loopback, not to every address."""
    kind, fields = description_fields(description)
    if kind not in LOOPBACK:
        return description
    positional = [f for f in fields if "=" not in f]
    if has_argument(description, "interface") or len(positional) > _INTERFACE_POSITION[kind]:
        return description
    # Quoted: "::1" unescaped would be three more fields, not one address.
    return ":".join([kind, *fields, "interface=" + quoteStringArgument(LOOPBACK[kind])])


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """Keys from an authorized_keys file, read at each login (edits apply at once), any user name."""

    def __init__(self, path: str) -> None:
        self.path = path

    def getAuthorizedKeys(self, username):
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                found.append(keys.Key.fromString(line))
            except Exception:
                continue  # a line that is not a key is skipped, not fatal
        return found


def host_key(data_dir: str) -> keys.Key:
    """The node's SSH host key: made once in the data dir, then reused."""
    path = os.path.join(data_dir, "manhole_host_key")
    if not os.path.exists(path):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    with open(path, "rb") as f:
        return keys.Key.fromString(f.read())


class AdminSession(manhole_ssh.TerminalSession):
    """An SSH session: the interactive shell, or one expression run by `ssh host 'expr'`."""

    namespace: dict = {}
    _shell = None

    def openShell(self, proto):
        self._shell = proto
        super().openShell(proto)

    def eofReceived(self):
        # In the shell, Ctrl-D or the end of a piped script ends the session;
        # a command's input ending changes nothing: its answer is still due.
        if self._shell is not None:
            self._shell.loseConnection()

    def windowChanged(self, size):
        pass

    def execCommand(self, proto, cmd):
        d = defer.maybeDeferred(self._run, cmd.decode("utf-8", "replace"))

        def answer(result):
            if result is not None:
                proto.write(pprint.pformat(result).encode() + b"\n")
            proto.processEnded(Failure(ProcessDone(None)))

        def failed(failure):
            proto.write(f"{failure.type.__name__}: {failure.getErrorMessage()}\n".encode())
            proto.processEnded(Failure(ProcessTerminated(exitCode=1)))

        d.addCallbacks(answer, failed)

    def _run(self, source: str):
        try:
            code = compile(source, "<ssh>", "eval")
        except SyntaxError:
            exec(compile(source, "<ssh>", "exec"), self.namespace)
            return None
        return eval(code, self.namespace)


def manhole_factory(namespace: dict, keys_file: str, data_dir: str) -> manhole_ssh.ConchFactory:
    realm = manhole_ssh.TerminalRealm()
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(manhole.ColoredManhole, namespace)
    realm.sessionFactory = type("Session", (AdminSession,), {"namespace": namespace})
    checker = SSHPublicKeyChecker(AuthorizedKeysFile(keys_file))
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, [checker]))
    key = host_key(data_dir)
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}
    return factory


class Admin:
    """What an operator can do from the shell; help() lists it.

    Calls that talk to Redis return Deferreds: the shell prints their result
    when it arrives.
    """

    def __init__(self, node) -> None:
        self.node = node

    def namespace(self) -> dict:
        ns = {name: getattr(self, name) for name in self.helpers()}
        ns["help"] = self.help
        ns["node"] = self.node
        return ns

    @staticmethod
    def helpers() -> list[str]:
        return sorted(n for n, v in vars(Admin).items()
                      if callable(v) and not n.startswith("_") and n not in ("namespace", "helpers", "help"))

    def help(self) -> str:
        lines = ["logplex admin helpers:"]
        for name in self.helpers():
            doc = (getattr(self, name).__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name:28} {doc}")
        text = "\n".join(lines)
        print(text)
        return None

    # -- credentials ----------------------------------------------------------------------
    def creds(self) -> list[dict]:
        """The credentials: id, permissions, note (never secrets)."""
        return [{"id": c.id, "perms": sorted(c.perms), "note": c.note}
                for c in sorted(self.node.store.cache.creds.values(), key=lambda c: c.id)]

    def cred_create(self, *perms: str, note: str = "") -> defer.Deferred:
        """cred_create('full_api', 'any_channel', note=...) -> (id, secret); the secret is shown once."""
        perms = perms or (FULL_API,)
        self._check_perms(perms)
        d = defer.ensureDeferred(self.node.store.create_credential(perms, note))
        return d.addCallback(lambda pair: {"id": pair[0].id, "secret": pair[1], "perms": sorted(perms)})

    def cred_grant(self, cred_id: str, perm: str) -> defer.Deferred:
        """cred_grant(id, 'full_api' | 'any_channel')."""
        return self._change_perms(cred_id, perm, True)

    def cred_revoke(self, cred_id: str, perm: str) -> defer.Deferred:
        """cred_revoke(id, 'full_api' | 'any_channel')."""
        return self._change_perms(cred_id, perm, False)

    def cred_delete(self, cred_id: str) -> defer.Deferred:
        """cred_delete(id)."""
        return defer.ensureDeferred(self.node.store.delete_credential(cred_id))

    def _check_perms(self, perms) -> None:
        unknown = set(perms) - PERMISSIONS
        if unknown:
            raise ValueError(f"unknown permission(s) {sorted(unknown)}; use {sorted(PERMISSIONS)}")

    def _change_perms(self, cred_id: str, perm: str, on: bool) -> defer.Deferred:
        self._check_perms([perm])
        cred = self.node.store.cache.creds.get(cred_id)
        if cred is None:
            raise KeyError(f"no credential {cred_id}")
        perms = cred.perms | {perm} if on else cred.perms - {perm}
        d = defer.ensureDeferred(self.node.store.put_credential(attrs.evolve(cred, perms=frozenset(perms))))
        return d.addCallback(lambda _: sorted(perms))

    # -- look-ups ---------------------------------------------------------------------------
    def channel(self, channel_or_token: str) -> dict | None:
        """channel(id or t.token): its flags, tokens and drains."""
        cache = self.node.store.cache
        token = cache.tokens.get(channel_or_token.encode())
        channel_id = token.channel_id if token else channel_or_token
        channel = cache.channels.get(channel_id)
        if channel is None:
            return None
        return {
            "channel": channel_id,
            "flags": sorted(channel.flags),
            "tokens": {t.name: t.id for t in self.node.store.tokens_of(channel_id)},
            "drains": [d.describe() for d in self.node.store.drains_of(channel_id)],
            "shard": self.node.backlogs.shard_of(channel_id),
        }

    def token(self, token: str) -> dict | None:
        """token(t.token): its channel and name."""
        found = self.node.store.cache.tokens.get(token.encode())
        return attrs.asdict(found) if found else None

    def drain(self, drain_or_token) -> dict | None:
        """drain(id or d.token): its record and this node's delivery state."""
        cache = self.node.store.cache
        found = cache.drains.get(drain_or_token) if isinstance(drain_or_token, int) else next(
            (d for d in cache.drains.values() if d.token == drain_or_token), None)
        if found is None:
            return None
        return {**found.describe(), "channel": found.channel_id,
                "state": self.node.drains.state(found.id)}

    def set_flag(self, channel_id: str, flag: str, on: bool = True) -> defer.Deferred:
        """set_flag(channel, 'no_tail' | 'no_redis', on=True): on every node."""
        if flag not in CHANNEL_FLAGS:
            raise ValueError(f"unknown flag {flag!r}; use {sorted(CHANNEL_FLAGS)}")
        channel = self.node.store.channel(channel_id)
        if channel is None:
            raise KeyError(f"no channel {channel_id}")
        flags = channel.flags | {flag} if on else channel.flags - {flag}
        d = defer.ensureDeferred(self.node.store.set_channel_flags(channel_id, frozenset(flags)))
        return d.addCallback(lambda _: sorted(flags))

    # -- this node's switches (logplex's deny_* settings) ----------------------------------
    def deny_tail_sessions(self, on: bool = True) -> bool:
        """deny_tail_sessions(True/False): new sessions on this node answer 503."""
        self.node.api.deny_tail_sessions = on
        return on

    def deny_drain_forwarding(self, on: bool = True) -> bool:
        """deny_drain_forwarding(True/False): this node stops handing messages to drains."""
        self.node.router.deny_drains = on
        return on

    def deny_redis_buffers(self, on: bool = True) -> bool:
        """deny_redis_buffers(True/False): this node stops writing backlogs."""
        self.node.router.deny_redis = on
        return on

    def deny_logs_ingress(self, on: bool = True) -> bool:
        """deny_logs_ingress(True/False): this node refuses logs (TCP closed, HTTP 503)."""
        self.node.router.deny_ingress = on
        return on

    def switches(self) -> dict:
        """The node's deny_* switches as they stand."""
        return {"deny_tail_sessions": self.node.api.deny_tail_sessions,
                "deny_drain_forwarding": self.node.router.deny_drains,
                "deny_redis_buffers": self.node.router.deny_redis,
                "deny_logs_ingress": self.node.router.deny_ingress}

    # -- shards, drains, stats ------------------------------------------------------------------
    def shards(self) -> dict:
        """The shard map this node follows: name -> URL ("config" = the config Redis)."""
        return dict(self.node.backlogs.urls)

    def replace_shard(self, name: str, url: str) -> defer.Deferred:
        """replace_shard('shard-0', 'redis://new:6379/0'): move a shard's data to a new Redis."""
        from logplex.backlog.shardmap import replace_shard

        return defer.ensureDeferred(replace_shard(
            self.node.store.redis, self.node.shard_pool, name, url, keys=self.node.store.keys,
            history=self.node.settings.backlog.history, reactor=self.node.reactor))

    def add_shard(self, url: str) -> defer.Deferred:
        """add_shard('redis://s3:6379/0'): about 1/N of the channels move to it."""
        from logplex.backlog.shardmap import add_shard

        return defer.ensureDeferred(add_shard(
            self.node.store.redis, self.node.shard_pool, url, keys=self.node.store.keys,
            history=self.node.settings.backlog.history, reactor=self.node.reactor))

    def drains_state(self) -> dict:
        """Every drain on this node: delivered, dropped, retried, buffered, spool depth."""
        return {i: w.state() for i, w in sorted(self.node.drains.workers.items())}

    def stats(self) -> dict:
        """This node's counters (as on /metrics, without labels summed)."""
        out: dict = {}
        for (name, labels), value in sorted(self.node.metrics.values.items()):
            out[name] = out.get(name, 0) + value
        return out

    def nodes(self) -> defer.Deferred:
        """The cluster's live nodes (from their heartbeats)."""
        return defer.ensureDeferred(self.node.registry.live())


def banner(node_name: str) -> str:
    return textwrap.dedent(f"""\
        logplex admin shell on {node_name}. help() lists the helpers.
        """)
