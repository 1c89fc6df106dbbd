"""The real syslog senders the integration tests run: rsyslogd and syslog-ng as
child processes with private sockets, syslog-ng's loggen, and a log-shuttle
work-alike.

Standard library only, so that ``.ci/run`` can run this file with the system
``python3`` before any virtualenv exists:

    python3 tests/harness/senders.py unpack-syslog-ng [DIR]
        Unpack syslog-ng and loggen (``apt-get download`` + ``dpkg -x``, not
        installed: syslog-ng's package conflicts with rsyslog) into DIR, by
        default the first writable cache directory of SYSLOG_NG_CACHES.

    python3 tests/harness/senders.py log-shuttle -logs-url URL -appname t.TOKEN ...
        Read lines on stdin and POST them as log-shuttle does (tests/harness/shuttle.py).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO_ROOT, "examples")
POLL = 0.02

# -- examples ---------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"@[A-Z][A-Z_]*@")


def example_text(name: str) -> str:
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        return f.read()


def render(name: str, **values: object) -> str:
    """examples/<name> with every ``@KEY@`` replaced by ``values[KEY]``.

    Every placeholder of the file must be given, and every value must be used:
    a test cannot run an example with a placeholder left in it.
    """
    text = example_text(name)
    found = set(_PLACEHOLDER.findall(text))
    wanted = {f"@{key}@" for key in values}
    if found != wanted:
        raise AssertionError(
            f"examples/{name} has placeholders {sorted(found)}, the test gave {sorted(wanted)}")
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    return text


# -- child processes --------------------------------------------------------------------------
def tail_text(path: str, limit: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} does not exist)"


class ChildProcess:
    """A daemon run in the foreground as a child, its output in a file, always stopped."""

    name = "child"

    def __init__(self, directory: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.argv = list(argv)
        self.env = env
        self.out_path = os.path.join(directory, f"{self.name}.out")
        self.proc: subprocess.Popen | None = None

    def ready(self) -> bool:
        return True

    def start(self, timeout: float = 15.0) -> None:
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not start ({' '.join(self.argv)}):\n{self.output()}")
            time.sleep(POLL)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout; the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    internal_log: str | None = None

    def output(self) -> str:
        """What the daemon printed and logged about itself, for failure messages."""
        text = tail_text(self.out_path)
        if self.internal_log:
            text += f"\n--- {os.path.basename(self.internal_log)}\n" + tail_text(self.internal_log)
        return text

    def own_log(self) -> str:
        """Everything the daemon printed and logged about itself so far."""
        text = tail_text(self.out_path, 1 << 20) if os.path.exists(self.out_path) else ""
        if self.internal_log and os.path.exists(self.internal_log):
            text += tail_text(self.internal_log, 1 << 20)
        return text

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


# -- rsyslog ----------------------------------------------------------------------------------
def rsyslogd_path() -> str | None:
    return shutil.which("rsyslogd") or next(
        (p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.access(p, os.X_OK)), None)


def rsyslog_module(name: str) -> str | None:
    """The path of rsyslog's loadable module ``name`` (e.g. lmnsd_gtls), if installed."""
    for pattern in ("/usr/lib/*/rsyslog", "/usr/lib/rsyslog", "/usr/lib64/rsyslog"):
        for directory in glob.glob(pattern):
            path = os.path.join(directory, name + ".so")
            if os.path.exists(path):
                return path
    return None


def program_version(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


class Rsyslogd(ChildProcess):
    """``rsyslogd -n`` with a config of its own: a private imuxsock socket as its
    only input (no /dev/log, no journal, no kernel log), a private work
    directory and pid file, and then ``config`` (an example, as a drop-in of
    /etc/rsyslog.d/ would be read after /etc/rsyslog.conf)."""

    name = "rsyslogd"

    def __init__(self, directory: str, config: str) -> None:
        os.makedirs(os.path.join(directory, "work"), exist_ok=True)
        self.socket = os.path.join(directory, "log.sock")
        self.pid_path = os.path.join(directory, "rsyslogd.pid")
        self.conf_path = os.path.join(directory, "rsyslog.conf")
        self.internal_log = os.path.join(directory, "rsyslogd.log")
        preamble = (
            f'global(workDirectory="{directory}/work")\n'
            'module(load="imuxsock" SysSock.Use="off")\n'
            # The parser chain rather than imuxsock's own: RFC 5424 from
            # `logger --rfc5424` keeps its MSGID and STRUCTURED-DATA.
            f'input(type="imuxsock" Socket="{self.socket}" useSpecialParser="off" parseHostname="on")\n'
            # rsyslogd's own messages (errors included) to a file, not to logplex.
            f'if $programname == "rsyslogd" then {{\n'
            f'    action(type="omfile" file="{self.internal_log}")\n'
            '    stop\n'
            '}\n'
        )
        with open(self.conf_path, "w", encoding="utf-8") as f:
            f.write(preamble + config)
        binary = rsyslogd_path() or "rsyslogd"
        super().__init__(directory, [binary, "-n", "-f", self.conf_path, "-i", self.pid_path])

    def ready(self) -> bool:
        return os.path.exists(self.socket) and os.path.exists(self.pid_path)

    def log(self, lines: Iterable[str], tag: str, *options: str) -> None:
        """``logger -u <socket> -t tag``: one message per line, in order."""
        send_logger(["-u", self.socket, "-t", tag, *options], lines)


def send_logger(args: Sequence[str], lines: Iterable[str], *, script: str | None = None) -> None:
    """Run logger (or a script around it) with lines on stdin: one message per line."""
    argv = ["sh", script, *args] if script else ["logger", *args]
    text = "".join(line + "\n" for line in lines)
    done = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()}")


# -- syslog-ng --------------------------------------------------------------------------------
SYSLOG_NG_PACKAGES = ("syslog-ng-core", "syslog-ng-mod-http", "libivykis0", "libnet1", "libwrap0", "libpcre3")
# What the tests run from the unpacked tree; each must find all its libraries.
_SYSLOG_NG_BINARIES = ("usr/sbin/syslog-ng", "usr/bin/loggen")


def syslog_ng_caches() -> list[str]:
    """Where an unpacked syslog-ng is looked for, first match wins."""
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [os.environ.get("LOGPLEX_SYSLOG_NG_ROOT", ""),
                  "/var/cache/logplex-tests/syslog-ng",
                  os.path.join(xdg, "logplex-tests", "syslog-ng")]
    return [c for c in candidates if c]


class SyslogNgTree:
    """syslog-ng unpacked under ``root`` (``root/usr/sbin/syslog-ng`` …)."""

    def __init__(self, root: str) -> None:
        self.root = root

    @classmethod
    def find(cls) -> "SyslogNgTree | None":
        for root in syslog_ng_caches():
            tree = cls(root)
            if tree.complete():
                return tree
        return None

    def complete(self) -> bool:
        return all(os.access(os.path.join(self.root, b), os.X_OK) for b in _SYSLOG_NG_BINARIES) \
            and self.module_dir() is not None

    def module_dir(self) -> str | None:
        dirs = sorted(glob.glob(os.path.join(self.root, "usr/lib/syslog-ng/[0-9]*")))
        return dirs[-1] if dirs else None

    @property
    def config_version(self) -> str:
        """The ``@version:`` this syslog-ng wants, from its module directory (3.38)."""
        return os.path.basename(self.module_dir() or "3.38")

    def env(self) -> dict[str, str]:
        r = self.root
        # The unpacked libraries (lib/x86_64-linux-gnu …), then syslog-ng's own.
        paths = glob.glob(f"{r}/lib/*-linux-gnu*") + glob.glob(f"{r}/usr/lib/*-linux-gnu*")
        paths += [f"{r}/usr/lib/syslog-ng"]
        paths += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(p for p in paths if os.path.isdir(p)))
        # loggen finds its transport plugins under $SYSLOGNG_PREFIX/lib/syslog-ng.
        env["SYSLOGNG_PREFIX"] = f"{r}/usr"
        return env

    @property
    def syslog_ng(self) -> str:
        return os.path.join(self.root, "usr/sbin/syslog-ng")

    @property
    def loggen(self) -> str:
        return os.path.join(self.root, "usr/bin/loggen")

    def version(self) -> str:
        return program_version([self.syslog_ng, "--version"], self.env())

    def missing_libraries(self) -> list[str]:
        """``ldd`` lines of 'not found' libraries of what the tests run."""
        targets = [os.path.join(self.root, b) for b in _SYSLOG_NG_BINARIES]
        module_dir = self.module_dir()
        if module_dir:
            targets += [os.path.join(module_dir, m) for m in
                        ("libafsocket.so", "libsyslogformat.so", "libaffile.so", "libbasicfuncs.so")]
            targets += glob.glob(os.path.join(module_dir, "loggen", "*.so"))
        missing = []
        for target in targets:
            done = subprocess.run(["ldd", target], capture_output=True, text=True, env=self.env())
            missing += [f"{os.path.basename(target)}: {line.strip()}"
                        for line in done.stdout.splitlines() if "not found" in line]
        return missing


def _installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip().endswith(" installed")


def _depends(deb: str) -> list[str]:
    done = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True, check=True)
    names = []
    for clause in done.stdout.split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


def unpack_syslog_ng(root: str) -> SyslogNgTree:
    """``apt-get download`` syslog-ng, loggen and the libraries this system
    lacks, and ``dpkg -x`` them into ``root`` (replaced). Nothing is installed."""
    with tempfile.TemporaryDirectory(prefix="syslog-ng-debs.") as debs:
        os.chmod(debs, 0o755)  # apt's sandbox user writes the downloads
        wanted = list(SYSLOG_NG_PACKAGES)
        fetched: set[str] = set()
        for _ in range(4):  # libraries of libraries, a few levels deep
            todo = [p for p in dict.fromkeys(wanted) if p not in fetched]
            if not todo:
                break
            subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *todo],
                           cwd=debs, check=True, stdout=subprocess.DEVNULL)
            fetched.update(todo)
            wanted = []
            for deb in glob.glob(os.path.join(debs, "*.deb")):
                wanted += [d for d in _depends(deb)
                           if d.startswith("lib") and d not in fetched and not _installed(d)]
        staging = root + ".new"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
            subprocess.run(["dpkg-deb", "-x", deb, staging], check=True)
    shutil.rmtree(root, ignore_errors=True)
    os.rename(staging, root)
    tree = SyslogNgTree(root)
    if not tree.complete():
        raise RuntimeError(f"{root} has no syslog-ng and loggen after unpacking")
    missing = tree.missing_libraries()
    if missing:
        raise RuntimeError("unpacked syslog-ng lacks libraries:\n" + "\n".join(missing))
    return tree


def writable_cache() -> str:
    for root in syslog_ng_caches():
        parent = os.path.dirname(root)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError:
            continue
        if os.access(parent, os.W_OK):
            return root
    raise RuntimeError(f"none of {syslog_ng_caches()} is writable")


class SyslogNg(ChildProcess):
    """``syslog-ng -F`` from an unpacked tree: ``source s_src`` is a private
    unix-dgram socket (where Debian's syslog-ng.conf has system() and
    internal()), then ``config`` as a file of /etc/syslog-ng/conf.d/ would be
    included."""

    name = "syslog-ng"

    def __init__(self, tree: SyslogNgTree, directory: str, config: str) -> None:
        self.tree = tree
        os.makedirs(directory, exist_ok=True)
        self.socket = os.path.join(directory, "log.sock")
        self.conf_path = os.path.join(directory, "syslog-ng.conf")
        self.pid_path = os.path.join(directory, "syslog-ng.pid")
        self.internal_log = os.path.join(directory, "internal.log")
        preamble = (
            f"@version: {tree.config_version}\n"
            "options { keep-hostname(yes); use-dns(no); stats-freq(0); };\n"
            f'source s_src {{ unix-dgram("{self.socket}"); }};\n'
            # syslog-ng's own messages (errors included) to a file, not to logplex.
            f'log {{ source {{ internal(); }}; destination {{ file("{self.internal_log}"); }}; }};\n'
        )
        with open(self.conf_path, "w", encoding="utf-8") as f:
            f.write(preamble + config)
        argv = [
            tree.syslog_ng, f"--module-path={tree.module_dir()}", "-F", "--no-caps",
            "-f", self.conf_path, "-R", os.path.join(directory, "syslog-ng.persist"),
            f"--pidfile={self.pid_path}", f"--control={os.path.join(directory, 'syslog-ng.ctl')}",
        ]
        super().__init__(directory, argv, tree.env())

    def ready(self) -> bool:
        # Written once every source and destination is up. s_src's socket
        # exists only when a log path uses it.
        return os.path.exists(self.pid_path)

    def log(self, lines: Iterable[str], tag: str, *options: str) -> None:
        _wait(lambda: os.path.exists(self.socket), 5, f"syslog-ng's socket {self.socket}")
        send_logger(["-u", self.socket, "-d", "-t", tag, *options], lines)


def run_loggen(tree: SyslogNgTree, port: int, count: int, *options: str, timeout: float = 60) -> str:
    """loggen sending ``count`` RFC 5424 octet-counted messages over one TCP
    connection (TLS with ``--use-ssl``, which verifies nothing)."""
    transport = [] if "--use-ssl" in options else ["--inet", "--stream"]
    argv = [tree.loggen, *transport, "--syslog-proto", f"--number={count}",
            "--active-connections=1", *options, "127.0.0.1", str(port)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=tree.env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "log-shuttle":
        try:
            from tests.harness.shuttle import main as shuttle_main
        except ImportError:  # run as a script: this file's directory is on sys.path
            from shuttle import main as shuttle_main
        return shuttle_main(argv[1:])
    if argv and argv[0] == "unpack-syslog-ng":
        root = argv[1] if len(argv) > 1 else writable_cache()
        tree = SyslogNgTree(root)
        if tree.complete() and not tree.missing_libraries():
            print(f"syslog-ng already unpacked in {root}: {tree.version()}")
            return 0
        tree = unpack_syslog_ng(root)
        print(f"syslog-ng unpacked in {root}: {tree.version()}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
