"""The peers of bench/peers.py: rsyslog (apt-get installed when missing) and syslog-ng (unpacked by
tests/harness/senders.py) as relays between the generator and the counting sink.
"""

import os
import subprocess
import sys

import ingest  # bench/ingest.py: spawn (it also puts the repository on sys.path)
from tests.harness import senders  # rsyslogd_path, SyslogNgTree, unpack_syslog_ng


# -- the peers -----------------------------------------------------------------------------
def ensure_rsyslog() -> tuple[str | None, str]:
    """rsyslogd's path (apt-get installing Debian's package when missing), or None and why not."""
    path = senders.rsyslogd_path()
    if path is None:
        print("peers: rsyslogd missing; apt-get install -y rsyslog", file=sys.stderr, flush=True)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-q", "rsyslog"], check=True, timeout=900, env=env,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"rsyslog not installed and apt-get failed ({e}); rsyslog rows skipped"
        path = senders.rsyslogd_path()
        if path is None:
            return None, "apt-get install rsyslog gave no rsyslogd; rsyslog rows skipped"
    return path, senders.program_version([path, "-v"])


def ensure_syslog_ng() -> tuple[senders.SyslogNgTree | None, str]:
    """An unpacked syslog-ng + loggen (as the integration tests unpack it), or None and why not."""
    tree = senders.SyslogNgTree.find()
    if tree is None or tree.missing_libraries():
        print("peers: unpacking syslog-ng (apt-get download + dpkg -x)", file=sys.stderr, flush=True)
        try:
            tree = senders.unpack_syslog_ng(senders.writable_cache())
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            return None, f"syslog-ng could not be unpacked ({e}); syslog-ng and loggen rows skipped"
    return tree, tree.version()


RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="8k")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{inp}" ruleset="relay")
ruleset(name="relay") {{
  action(type="omfwd" target="127.0.0.1" port="{out}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
"""
SYSLOG_NG_CONF = """\
@version: {version}
options {{ stats-freq(0); keep-hostname(yes); keep-timestamp(yes); use-dns(no); log-fifo-size(100000); }};
log {{ source {{ internal(); }}; destination {{ file("{internal}"); }}; }};
source s_net {{ syslog(transport(tcp) ip("127.0.0.1") port({inp}) max-connections(16)
                      log-iw-size(160000) log-fetch-limit(1000)); }};
{destination}
log {{ source(s_net); destination(d_out); flags(flow-control); }};
"""
SYSLOG_NG_TCP = 'destination d_out {{ syslog("127.0.0.1" transport(tcp) port({out})); }};'
SYSLOG_NG_HTTP = """destination d_out {{
  http(url("http://127.0.0.1:{out}/logs") method("POST")
       headers("Content-Type: application/logplex-1")
       body("<${{PRI}}>1 ${{ISODATE}} ${{HOST}} ${{PROGRAM}} ${{PID}} ${{MSGID:--}} - ${{MSG}}")
       delimiter("\\n") batch-lines(500) batch-bytes(1048576) batch-timeout(100) workers(1));
}};"""


def start_relay(kind: str, tmp: str, inp: int, out: int, peers: dict) -> subprocess.Popen:
    if kind == "rsyslog":
        os.makedirs(os.path.join(tmp, "work"))
        conf = os.path.join(tmp, "rsyslog.conf")
        with open(conf, "w") as f:
            f.write(RSYSLOG_CONF.format(work=os.path.join(tmp, "work"), inp=inp, out=out))
        proc = ingest.spawn([peers["rsyslogd"], "-n", "-f", conf, "-i", os.path.join(tmp, "rsyslogd.pid")],
                            os.path.join(tmp, "relay.log"))
    else:
        tree = peers["syslog-ng"]
        dest = (SYSLOG_NG_TCP if kind == "sng-tcp" else SYSLOG_NG_HTTP).format(out=out)
        conf = os.path.join(tmp, "syslog-ng.conf")
        with open(conf, "w") as f:
            f.write(SYSLOG_NG_CONF.format(version=tree.config_version, internal=os.path.join(tmp, "internal.log"),
                                          inp=inp, destination=dest))
        proc = ingest.spawn([tree.syslog_ng, f"--module-path={tree.module_dir()}", "-F", "--no-caps", "-f", conf,
                             "-R", os.path.join(tmp, "persist"), f"--pidfile={os.path.join(tmp, 'sng.pid')}",
                             f"--control={os.path.join(tmp, 'sng.ctl')}"], os.path.join(tmp, "relay.log"), tree.env())
    ingest.wait_for(lambda: listening(inp), f"{kind} listening on {inp}", proc, timeout=30)
    return proc


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp: no connection is made)."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].split(":")[1], 16) == port:
            return True
    return False
