"""The SSH runner's checks that need no server: keys, pins, error messages.

No lab, no database: keys are made in a temporary folder, and every check here fails
before a connection is attempted.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from instances import ssh
from instances.ssh import SSHError

OPENSSH = serialization.PrivateFormat.OpenSSH
PEM = serialization.PrivateFormat.TraditionalOpenSSL


def write_key(path, key, fmt, password: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    encoding = serialization.Encoding.PEM
    path.write_bytes(key.private_bytes(encoding, fmt, encryption))
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


@pytest.fixture
def key_path(tmp_path, settings):
    path = tmp_path / "id_test"
    settings.SSH_PRIVATE_KEY = str(path)
    return path


def unpinned(**changes):
    fields = dict(
        hostname="127.0.1.250", ssh_port=22, ssh_user="postgres", host_key_type="", host_key=""
    )
    return SimpleNamespace(**(fields | changes))


@pytest.mark.parametrize(
    "make, fmt",
    [
        (ed25519.Ed25519PrivateKey.generate, OPENSSH),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), OPENSSH),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), PEM),
    ],
    ids=["ed25519", "rsa-openssh", "rsa-pem"],
)
def test_it_derives_the_controller_public_key(key_path, make, fmt):
    public = write_key(key_path, make(), fmt)
    line = ssh.controller_public_key()
    assert line.split()[:2] == public.split()[:2]


def test_it_prefers_a_matching_pub_file_for_its_comment(key_path):
    public = write_key(key_path, ed25519.Ed25519PrivateKey.generate(), OPENSSH)
    (key_path.parent / "id_test.pub").write_text(f"{public} elephaas@controller\n")
    assert ssh.controller_public_key() == f"{public} elephaas@controller"


def test_it_ignores_a_stale_pub_file(key_path):
    public = write_key(key_path, ed25519.Ed25519PrivateKey.generate(), OPENSSH)
    other = write_key(key_path.parent / "other", ed25519.Ed25519PrivateKey.generate(), OPENSSH)
    (key_path.parent / "id_test.pub").write_text(f"{other} old\n")
    assert ssh.controller_public_key().split()[:2] == public.split()


def test_it_reports_a_missing_private_key(key_path):
    with pytest.raises(SSHError) as caught:
        ssh.controller_public_key()
    assert caught.value.stage == "config"
    assert str(key_path) in str(caught.value) and "ELEPHAAS_SSH_KEY" in str(caught.value)


def test_it_reports_a_passphrase_protected_key(key_path):
    write_key(key_path, ed25519.Ed25519PrivateKey.generate(), OPENSSH, password=b"hunter22")
    # The key is read before any connection is attempted.
    with pytest.raises(SSHError) as caught:
        ssh.run(unpinned(host_key="AAAAC3NzaC1lZDI1NTE5AAAAIGNv"), ["true"])
    assert caught.value.stage == "config"
    with pytest.raises(SSHError) as caught:
        ssh.controller_public_key()
    assert caught.value.stage == "config"
    assert "passphrase" in str(caught.value)
    assert "hunter22" not in str(caught.value)


def test_it_does_not_quote_an_unreadable_key_file(key_path):
    key_path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n")
    with pytest.raises(SSHError) as caught:
        ssh.controller_public_key()
    assert caught.value.stage == "config"
    assert "c2VjcmV0" not in str(caught.value) and "c2VjcmV0" not in repr(caught.value.__cause__)


def test_it_refuses_a_server_without_a_pin_before_connecting():
    with pytest.raises(SSHError) as caught:
        ssh.run(unpinned(), ["true"])
    assert caught.value.stage == "hostkey"
    assert str(caught.value).startswith("127.0.1.250: no host key is pinned")
    assert not caught.value.command_started


@pytest.mark.parametrize("key", ["not base64!", "AAAA"])
def test_it_refuses_a_malformed_pin(key):
    with pytest.raises(SSHError) as caught:
        ssh.run(unpinned(host_key=key), ["true"])
    assert caught.value.stage == "config"


def test_it_refuses_a_pin_whose_type_does_not_match_its_key():
    ed_key = "AAAAC3NzaC1lZDI1NTE5AAAAII6Xt4CpNNzIoZxeQHFLvCdm9b4R0OgEd9628YR793Np"
    with pytest.raises(SSHError) as caught:
        ssh.run(unpinned(host_key_type="ssh-rsa", host_key=ed_key), ["true"])
    assert caught.value.stage == "config"
    assert "ssh-ed25519" in str(caught.value)


def test_it_validates_arguments_before_connecting():
    with pytest.raises(ValueError, match="empty"):
        ssh.run(unpinned(), [])
    with pytest.raises(ValueError, match="NUL"):
        ssh.run(unpinned(), ["echo", "a\x00b"])


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_it_prints_fingerprints_like_ssh_keygen(tmp_path):
    public = write_key(tmp_path / "k", ed25519.Ed25519PrivateKey.generate(), OPENSSH)
    (tmp_path / "k.pub").write_text(public + "\n")
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, check=True
    ).stdout.decode()
    assert ssh.host_key_fingerprint(public.split()[1]) == printed.split()[1]


def test_it_formats_errors_on_one_line():
    error = SSHError("db1.example", "exit", "`false` exited with status 1: a\nb", exit_status=1)
    assert str(error) == "db1.example: `false` exited with status 1: a b"
    assert error.stage == ssh.Stage.EXIT == "exit"
    assert SSHError("", "config", "no key").args == ("no key",)
    with pytest.raises(ValueError):
        SSHError("h", "exploded", "unknown stage")


def test_it_keeps_error_details_when_pickled():
    error = SSHError("db1", "exit", "boom", exit_status=3, stderr_tail="boom", command_started=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.server, copy.stage, copy.exit_status, copy.stderr_tail, str(copy)) == (
        "db1",
        "exit",
        3,
        "boom",
        "db1: boom",
    )
    assert copy.command_started
