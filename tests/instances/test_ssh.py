"""The SSH runner against the lab's real sshd servers (no database needed).

Each lab server is an sshd on its own loopback address; `lab_servers` carries their
pinned host keys. Server 1 is used for most tests, server 2 lends its key to show that a
wrong pin is refused.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instances import ssh
from instances.ssh import SSHError

pytestmark = pytest.mark.lab


@pytest.fixture
def server(lab_servers):
    return lab_servers[0]


_baseline = 0


@pytest.fixture(autouse=True)
def empty_pool():
    """Each test starts and ends without pooled connections, and counts its own."""
    global _baseline
    ssh.close_all()
    _baseline = ssh.pool_stats().connections_opened
    yield
    ssh.close_all()


def opened() -> int:
    """Connections the pool opened during this test."""
    return ssh.pool_stats().connections_opened - _baseline


def remote_sleeps(server, seconds: str) -> list[str]:
    """The `sleep <seconds>` processes still running on the server."""
    out = ssh.run(server, ["ps", "-u", "postgres", "-o", "args="]).stdout
    return [line for line in out.splitlines() if line.strip() == f"sleep {seconds}"]


def unique_seconds() -> str:
    # A sleep duration no other test uses, to find exactly this test's process.
    return f"{30 + uuid.uuid4().int % 10_000 / 10_000:.4f}"


# --- Trust ---------------------------------------------------------------------------------


def test_it_accepts_the_pinned_key_and_runs_as_the_ssh_user(server):
    result = ssh.run(server, ["id", "-un"])
    assert result.exit_status == 0
    assert result.stdout == "postgres\n"
    assert result.command == "id -un"
    assert result.duration > 0


def test_it_refuses_a_wrong_pinned_key_before_running_anything(lab_servers):
    first, second = lab_servers[0], lab_servers[1]
    impostor = dataclasses.replace(
        first, host_key_type=second.host_key_type, host_key=second.host_key
    )
    marker = f"elephaas-hostkey-test-{uuid.uuid4().hex}"
    with pytest.raises(SSHError) as caught:
        ssh.run(impostor, ["touch", marker])
    error = caught.value
    assert error.stage == "hostkey"
    assert error.server == first.hostname
    assert not error.command_started
    message = str(error)
    assert second.host_key_fingerprint in message  # the pin
    assert first.host_key_fingerprint in message  # what the server presents
    assert "re-pin" in message and "server page" in message
    assert "\n" not in message
    # The command never ran (the home folder is the server's own).
    assert ssh.run(first, ["test", "-e", marker], check=False).exit_status == 1


def test_it_refuses_a_server_without_a_pinned_key(server):
    before = opened()
    for unpinned in (
        dataclasses.replace(server, host_key=""),
        dataclasses.replace(server, host_key=None),
    ):
        with pytest.raises(SSHError) as caught:
            ssh.run(unpinned, ["true"])
        assert caught.value.stage == "hostkey"
        assert "no host key is pinned" in str(caught.value)
    assert opened() == before


def test_it_does_not_reuse_a_connection_when_the_pin_changes(lab_servers):
    first, second = lab_servers[0], lab_servers[1]
    ssh.run(first, ["true"])
    repinned = dataclasses.replace(first, host_key=second.host_key)
    with pytest.raises(SSHError) as caught:
        ssh.run(repinned, ["true"])
    assert caught.value.stage == "hostkey"
    # Back to the right pin: a new connection; the one made under it was retired.
    ssh.run(first, ["true"])
    assert opened() == 2


def test_it_fetches_the_servers_real_host_key(lab_servers):
    for lab_server in lab_servers[:2]:
        key_type, key, fingerprint = ssh.fetch_host_key(lab_server.hostname, lab_server.ssh_port)
        assert (key_type, key) == (lab_server.host_key_type, lab_server.host_key)
        assert fingerprint == lab_server.host_key_fingerprint
        assert ssh.host_key_fingerprint(key) == fingerprint


# --- Connection failures -------------------------------------------------------------------


def test_it_reports_an_unreachable_address_quickly(server):
    nowhere = dataclasses.replace(server, hostname="127.0.1.250")
    started = time.monotonic()
    with pytest.raises(SSHError) as caught:
        ssh.run(nowhere, ["true"])
    assert time.monotonic() - started < 2
    assert caught.value.stage == "connect"
    assert caught.value.transient
    assert "127.0.1.250:22" in str(caught.value) and "refused" in str(caught.value)
    with pytest.raises(SSHError) as caught:
        ssh.fetch_host_key("127.0.1.250", 22)
    assert caught.value.stage == "connect"


def test_it_reports_a_wrong_port(server):
    with pytest.raises(SSHError) as caught:
        ssh.run(dataclasses.replace(server, ssh_port=2), ["true"])
    assert caught.value.stage == "connect"
    assert "refused" in str(caught.value) and "port" in str(caught.value)


def test_it_reports_a_port_that_is_not_an_ssh_server():
    # A real listener that answers like a web server, then hangs up.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer():
        for _ in range(2):
            conn, _address = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(SSHError) as caught:
                ssh.fetch_host_key("127.0.0.1", port, timeout=3)
            assert caught.value.stage == "connect"
            assert "not answer as an SSH server" in str(caught.value)
            assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_it_checks_a_login(server):
    before = opened()
    ssh.check_login(server)
    # Not pooled: a check proves the login works now, not that it once did.
    assert opened() == before
    assert ssh.pool_stats().transports == 0


def test_it_reports_a_refused_login(server):
    with pytest.raises(SSHError) as caught:
        ssh.check_login(dataclasses.replace(server, ssh_user="nobody"))
    error = caught.value
    assert error.stage == "auth"
    assert "nobody@" in str(error)
    assert "authorized_keys" in str(error)
    assert not error.transient


# --- Commands ------------------------------------------------------------------------------


def test_it_raises_on_a_non_zero_exit(server):
    with pytest.raises(SSHError) as caught:
        ssh.run(server, ["sh", "-c", "echo first >&2; echo boom >&2; exit 3"])
    error = caught.value
    assert error.stage == "exit"
    assert error.exit_status == 3
    assert error.stderr_tail == "first\nboom"
    assert "status 3" in str(error) and "boom" in str(error)
    assert "\n" not in str(error)
    assert error.command_started and not error.transient


def test_it_returns_a_non_zero_exit_without_check(server):
    result = ssh.run(server, ["sh", "-c", "echo out; echo err >&2; exit 4"], check=False)
    assert (result.exit_status, result.stdout, result.stderr) == (4, "out\n", "err\n")


HOSTILE = [
    "$(id)",
    "`id`",
    "'",
    '"',
    "it's",
    "a\nb",
    "; rm -rf ~",
    "*",
    "-n",
    "--",
    "",
    "$HOME ${PATH}",
    "| cat > x",
    "\\",
    "é ☃",
]


def test_it_passes_hostile_arguments_literally(server):
    for value in HOSTILE:
        assert ssh.run(server, ["printf", "%s", value]).stdout == value
    out = ssh.run(server, ["printf", "%s\\0", *HOSTILE]).stdout
    assert out.split("\0")[:-1] == HOSTILE


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.text(
            st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30
        ),
        max_size=5,
    )
)
def test_it_passes_any_text_literally(server, argv):
    out = ssh.run(server, ["printf", "%s\\0", *argv]).stdout
    assert out.split("\0")[:-1] == (argv or [""])


def test_it_writes_input_to_stdin(server):
    secret = "s3cr3t ' $(id) \n second line\n"
    result = ssh.run(server, ["cat"], input=secret)
    assert result.stdout == secret
    assert secret not in result.command
    assert ssh.run(server, ["cat"], input=b"\x00\x01bytes").stdout == "\x00\x01bytes"
    # Without input the command sees EOF at once instead of waiting for it.
    assert ssh.run(server, ["cat"], timeout=5).stdout == ""


def test_it_keeps_input_out_of_error_messages(server):
    with pytest.raises(SSHError) as caught:
        ssh.run(server, ["sh", "-c", "cat >/dev/null; echo denied >&2; exit 1"], input="hunter2")
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value.args)


def test_it_streams_large_input_and_output_together(server):
    # cat echoes as it reads: both directions stay busy for 6 MB each way.
    data = (uuid.uuid4().hex * 200_000)[:6_000_000]
    result = ssh.run(server, ["cat"], input=data, timeout=60)
    assert len(result.stdout) == len(data)
    assert result.stdout == data


def test_it_reads_large_output_on_both_streams_without_deadlock(server):
    # Stderr is filled first: a reader waiting for stdout to end would never see it.
    script = "head -c 4000000 /dev/zero | tr '\\0' e >&2; head -c 6000000 /dev/zero | tr '\\0' o"
    result = ssh.run(server, ["sh", "-c", script], timeout=60)
    assert len(result.stderr) == 4_000_000 and set(result.stderr) == {"e"}
    assert len(result.stdout) == 6_000_000 and set(result.stdout) == {"o"}


def test_it_stops_a_command_at_its_timeout(server):
    seconds = unique_seconds()
    started = time.monotonic()
    with pytest.raises(SSHError) as caught:
        ssh.run(server, ["sleep", seconds], timeout=0.5)
    assert time.monotonic() - started < 2
    assert caught.value.stage == "timeout"
    assert "0.5 s" in str(caught.value)
    assert caught.value.command_started
    # The command itself was stopped, not just the wait for it.
    deadline = time.monotonic() + 3
    while remote_sleeps(server, seconds) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remote_sleeps(server, seconds) == []


def test_it_cancels_a_running_command(server):
    seconds = unique_seconds()
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(SSHError) as caught:
        ssh.run(server, ["sleep", seconds], cancel=cancel)
    elapsed = time.monotonic() - started
    assert caught.value.stage == "cancelled"
    assert 0.3 <= elapsed < 1.5
    deadline = time.monotonic() + 3
    while remote_sleeps(server, seconds) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remote_sleeps(server, seconds) == []
    # The connection survives a cancelled command.
    assert ssh.run(server, ["true"]).exit_status == 0
    assert opened() == 1


def test_it_ends_a_command_when_its_connection_dies(server):
    """As when the worker is killed: its TCP connection closes under a running command,
    and the command (here a child of a child) ends with it, in its own process group."""
    seconds = unique_seconds()
    caught = []

    def go():
        try:
            ssh.run(server, ["sh", "-c", 'sleep "$1"; echo survived', "sh", seconds])
        except SSHError as exc:
            caught.append(exc)

    thread = threading.Thread(target=go)
    thread.start()
    deadline = time.monotonic() + 5
    while not remote_sleeps(server, seconds):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    (transport,) = ssh._pool.transports_for(server)
    transport.sock.shutdown(socket.SHUT_RDWR)
    thread.join(timeout=10)
    assert caught and caught[0].stage == "connect"
    deadline = time.monotonic() + 3
    while remote_sleeps(server, seconds) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert remote_sleeps(server, seconds) == []


def test_it_names_a_command_by_its_owner_and_ends_what_an_owner_left(server):
    """commands.end_owned finds a lost owner's command by its marker and ends its whole
    session, however it was started; another owner's command is left alone."""
    from instances import commands

    mine, theirs = unique_seconds(), unique_seconds()
    threads = [
        threading.Thread(
            target=lambda s=s, o=o: ssh.run(server, ["sleep", s], owner=o, check=False),
            daemon=True,
        )
        for s, o in ((mine, "job-424242"), (theirs, "job-434343"))
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while not (remote_sleeps(server, mine) and remote_sleeps(server, theirs)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out = ssh.run(server, commands.end_owned("job-424242"), owner="reaper").stdout
    assert f"sleep {mine}" in out and "elephaas-job-424242" in out
    assert remote_sleeps(server, mine) == []
    assert remote_sleeps(server, theirs) != []
    nothing = ssh.run(server, commands.end_owned("job-999999"), owner="reaper").stdout
    assert nothing.strip() == "nothing of elephaas-job-999999 runs here"
    ssh.run(server, commands.end_owned("job-434343"), owner="reaper")
    for thread in threads:
        thread.join(timeout=10)


def test_it_does_not_start_a_command_already_cancelled(server):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SSHError) as caught:
        ssh.run(server, ["true"], cancel=cancel)
    assert caught.value.stage == "cancelled"
    assert not caught.value.command_started
    assert opened() == 0


# --- The pool ------------------------------------------------------------------------------


def test_it_reuses_one_connection(server):
    ssh.run(server, ["true"])
    (transport,) = ssh._pool.transports_for(server)
    for _ in range(19):
        ssh.run(server, ["true"])
    assert opened() == 1
    assert ssh._pool.transports_for(server) == [transport]


def test_it_opens_a_fresh_connection_on_request(server):
    ssh.run(server, ["true"])
    assert ssh.run(server, ["id", "-un"], fresh=True).stdout == "postgres\n"
    assert opened() == 1  # the fresh one is not the pool's
    assert ssh.pool_stats().transports == 1


def test_it_reconnects_when_the_pooled_connection_was_closed(server):
    ssh.run(server, ["true"])
    (old,) = ssh._pool.transports_for(server)
    old.close()
    assert ssh.run(server, ["echo", "again"]).stdout == "again\n"
    (new,) = ssh._pool.transports_for(server)
    assert new is not old
    assert opened() == 2


def test_it_reconnects_when_the_socket_dies_under_it(server):
    ssh.run(server, ["true"])
    (old,) = ssh._pool.transports_for(server)
    # The transport may still look alive when the next command asks for a channel.
    old.sock.shutdown(socket.SHUT_RDWR)
    assert ssh.run(server, ["echo", "again"]).stdout == "again\n"
    assert opened() == 2


def test_it_reports_a_connection_lost_mid_command_without_rerunning_it(server):
    marker = f"elephaas-lost-{uuid.uuid4().hex}"
    # The command kills the sshd process serving its own connection, after leaving a mark
    # (its nearest ancestor named sshd: the runner's wrapper and a shell stand between).
    script = (
        f"echo x >> {marker}; p=$PPID; "
        'while [ "$(ps -o comm= -p "$p")" != sshd ]; do p=$(ps -o ppid= -p "$p" | tr -d " "); '
        'done; kill -9 "$p"; sleep 5'
    )
    with pytest.raises(SSHError) as caught:
        ssh.run(server, ["sh", "-c", script])
    assert caught.value.stage == "connect"
    assert caught.value.command_started and not caught.value.transient
    assert "may or may not have completed" in str(caught.value)
    # Ran exactly once; the next command gets a new connection.
    assert ssh.run(server, ["cat", marker]).stdout == "x\n"
    ssh.run(server, ["rm", "-f", marker])
    assert opened() == 2


def test_it_runs_commands_from_many_threads_at_once(server):
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(number: int) -> None:
        try:
            barrier.wait()
            results[number] = ssh.run(
                server, ["sh", "-c", 'sleep 0.3; echo "$1"', "sh", str(number)]
            ).stdout
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == {n: f"{n}\n" for n in range(8)}
    assert time.monotonic() - started < 8 * 0.3  # they ran side by side
    assert opened() == 1  # eight threads, one connection


def test_it_opens_another_connection_past_the_session_limit(server):
    count = ssh.MAX_CHANNELS_PER_TRANSPORT + 2
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            ssh.run(server, ["sleep", "0.5"])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert opened() == 2


def test_it_does_not_share_connections_with_a_forked_child(server):
    ssh.run(server, ["true"])
    (parent_transport,) = ssh._pool.transports_for(server)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        try:
            inherited = ssh.pool_stats().transports
            out = ssh.run(server, ["echo", "child"]).stdout.strip()
            os.write(write_end, f"{inherited} {out}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as reader:
        assert reader.read() == "0 child"
    # The parent's connection was left alone by the child and still works.
    assert ssh.run(server, ["echo", "parent"]).stdout == "parent\n"
    assert ssh._pool.transports_for(server) == [parent_transport]


def test_it_shows_the_controller_public_key(lab):
    line = ssh.controller_public_key()
    key_type, key = line.split()[:2]
    assert key_type in ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256")
    private = ssh._private_key()
    assert (key_type, key) == (private.get_name(), private.get_base64())
