"""The admin shell, reached with the real OpenSSH client and a key the test makes."""

import os
import shutil
import subprocess

import pytest

from tests.harness.client import make_key, ssh, start_node, stop_node
from tests.harness.procs import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None and not os.environ.get("CI"), reason="OpenSSH client not installed")


@pytest.fixture(scope="module")
def shell(tmp_path_factory, redis):
    keys = tmp_path_factory.mktemp("keys")
    key = make_key(str(keys / "admin"))
    make_key(str(keys / "stranger"))
    authorized = keys / "authorized_keys"
    authorized.write_bytes(open(key + ".pub", "rb").read())
    port = free_port()
    # No interface given: the shell must bind to loopback only.
    node = start_node(tmp_path_factory, redis, "--manhole", f"tcp:{port}",
                      "--manhole-keys", str(authorized))
    yield node, port, key, str(keys / "stranger")
    stop_node(node)


def test_a_helper_runs_and_answers(shell):
    node, port, key, _ = shell
    answer = ssh(port, key, "creds()")
    assert answer.returncode == 0, answer.stderr
    assert b"'id': 'admin'" in answer.stdout and b"'full_api'" in answer.stdout
    assert b"secret" not in answer.stdout


def test_a_switch_flipped_in_the_shell_takes_effect_on_the_node(shell):
    node, port, key, _ = shell
    assert ssh(port, key, "deny_logs_ingress(True)").returncode == 0
    channel, tokens = node.channel("app")
    answer = node.post_logs(b"5 hello", auth="Bearer " + tokens["app"])
    assert answer.status == 503
    assert ssh(port, key, "deny_logs_ingress(False)").returncode == 0
    assert b"'deny_logs_ingress': False" in ssh(port, key, "switches()").stdout


def test_a_credential_made_in_the_shell_works_on_the_api(shell):
    node, port, key, _ = shell
    answer = ssh(port, key, "cred_create('full_api', note='ops')")
    assert answer.returncode == 0, answer.stderr
    made = eval(answer.stdout)  # the shell prints a dict literal
    assert node.api("GET", "/v3/nodes", auth=(made["id"], made["secret"])).status == 200
    assert ssh(port, key, f"cred_revoke({made['id']!r}, 'full_api')").returncode == 0
    assert node.api("GET", "/v3/nodes", auth=(made["id"], made["secret"])).status == 403


def test_errors_are_one_line_and_a_failing_exit_status(shell):
    node, port, key, _ = shell
    answer = ssh(port, key, "set_flag('nochannel', 'no_tail')")
    assert answer.returncode == 1
    assert answer.stdout.strip() == b"KeyError: 'no channel nochannel'"


def test_the_interactive_shell_lists_its_helpers(shell):
    node, port, key, _ = shell
    answer = ssh(port, key, tty=True, stdin=b"help()\n")
    assert b"logplex admin helpers:" in answer.stdout
    for helper in (b"cred_create", b"deny_tail_sessions", b"replace_shard", b"drains_state", b"nodes"):
        assert helper in answer.stdout


def test_a_key_that_is_not_authorized_is_refused(shell):
    node, port, key, stranger = shell
    answer = ssh(port, stranger, "creds()")
    assert answer.returncode == 255
    assert b"Permission denied" in answer.stderr


def test_the_shell_listens_on_loopback_only_and_keeps_its_host_key(shell):
    node, port, key, _ = shell
    listening = [line.split()[1] for line in open("/proc/net/tcp").read().splitlines()[1:]
                 if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in listening
    assert not any(addr.endswith(f":{port:04X}") and addr != f"0100007F:{port:04X}" for addr in listening)
    host_key = os.path.join(node.proc.data_dir, "manhole_host_key")
    assert oct(os.stat(host_key).st_mode & 0o777) == "0o600"


def listening_addresses(port: int) -> set[str]:
    """The local addresses (as the kernel writes them) of every TCP and TCP6 socket listening on port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK4 = "0100007F"
LOOPBACK6 = "00000000000000000000000001000000"


@pytest.mark.parametrize("kind, loopback", [("tcp6", LOOPBACK6), ("TCP6", LOOPBACK6), ("TCP", LOOPBACK4)])
def test_every_spelling_of_a_tcp_manhole_binds_loopback_only(tmp_path_factory, redis, kind, loopback):
    """tcp6:PORT used to stop the node at start, TCP6:PORT bound every interface."""
    keys = tmp_path_factory.mktemp("keys6")
    key = make_key(str(keys / "admin"))
    authorized = keys / "authorized_keys"
    authorized.write_bytes(open(key + ".pub", "rb").read())
    port = free_port()
    node = start_node(tmp_path_factory, redis, "--manhole", f"{kind}:{port}", "--manhole-keys", str(authorized))
    try:
        assert listening_addresses(port) == {loopback}
        host = "::1" if loopback == LOOPBACK6 else "127.0.0.1"
        answer = subprocess.run(
            ["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"admin@{host}", "switches()"],
            capture_output=True, timeout=30)
        assert answer.returncode == 0 and b"deny_logs_ingress" in answer.stdout, answer.stderr
    finally:
        stop_node(node)


def test_a_named_interface_is_kept(tmp_path_factory, redis):
    keys = tmp_path_factory.mktemp("keysany")
    authorized = keys / "authorized_keys"
    authorized.write_bytes(open(make_key(str(keys / "admin")) + ".pub", "rb").read())
    port = free_port()
    node = start_node(tmp_path_factory, redis, "--manhole", f"tcp6:{port}:interface=\\:\\:",
                      "--manhole-keys", str(authorized))
    try:
        assert listening_addresses(port) == {"00000000000000000000000000000000"}
    finally:
        stop_node(node)
