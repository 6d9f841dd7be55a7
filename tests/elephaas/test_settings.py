"""Settings read at start-up: the controller's /etc hook, TLS and proxy variables, the env
file's last-value-wins rule.

Each case starts a fresh Python with `elephaas.settings`, as a service starts: settings are
read once per process, so they cannot be changed in the test's own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab]  # the lab's env file holds the secret key

REPO = Path(__file__).resolve().parents[2]
SHOWN = (
    "FROM_ETC",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_PROXY_SSL_HEADER",
    "TIME_ZONE",
    "ALLOWED_HOSTS",
)
SCRIPT = f"""
import json
from django.conf import settings
print(json.dumps({{name: getattr(settings, name, None) for name in {SHOWN!r}}}))
"""


def load_settings(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELEPHAAS_")}
    env.update(
        DJANGO_SETTINGS_MODULE="elephaas.settings",
        # The lab's secret key and addresses, as the other settings need them.
        ELEPHAAS_ENV_FILE=os.environ.get("ELEPHAAS_ENV_FILE", str(REPO / ".lab/elephaas.env")),
        # Not this machine's /etc/elephaas/local_settings.py (tests/deploy installs one).
        ELEPHAAS_LOCAL_SETTINGS=str(tmp_path / "absent.py"),
    )
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def shown(tmp_path: Path, **variables: str) -> dict:
    done = load_settings(tmp_path, **variables)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_it_runs_the_controllers_local_settings(tmp_path, lab) -> None:
    hook = tmp_path / "local_settings.py"
    # In the settings' own namespace: it can read and change what is already set.
    hook.write_text("FROM_ETC = 'yes'\nALLOWED_HOSTS.append('admin.example.com')\n")
    values = shown(tmp_path, ELEPHAAS_LOCAL_SETTINGS=str(hook), ELEPHAAS_ALLOWED_HOSTS="a,b")
    assert values["FROM_ETC"] == "yes"
    assert values["ALLOWED_HOSTS"] == ["a", "b", "admin.example.com"]


def test_it_runs_without_the_hook(tmp_path, lab) -> None:
    assert shown(tmp_path)["FROM_ETC"] is None


def test_it_keeps_http_defaults(tmp_path, lab) -> None:
    values = shown(tmp_path)
    assert values["SESSION_COOKIE_SECURE"] is False
    assert values["CSRF_COOKIE_SECURE"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0
    assert values["SECURE_PROXY_SSL_HEADER"] is None


def test_it_secures_cookies_and_sends_hsts_behind_tls(tmp_path, lab) -> None:
    values = shown(tmp_path, ELEPHAAS_SECURE_COOKIES="true", ELEPHAAS_HSTS_SECONDS="31536000")
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_HSTS_SECONDS"] == 31536000


def test_it_trusts_the_proxys_scheme_header(tmp_path, lab) -> None:
    values = shown(tmp_path, ELEPHAAS_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


@pytest.mark.parametrize("header", ["X Forwarded Proto", "X-Forwarded-Proto: https", "Ä"])
def test_it_refuses_a_header_that_is_not_a_name(tmp_path, lab, header) -> None:
    done = load_settings(tmp_path, ELEPHAAS_PROXY_SSL_HEADER=header)
    assert done.returncode != 0
    assert "ELEPHAAS_PROXY_SSL_HEADER" in done.stderr


def test_it_takes_the_last_value_of_a_key_set_twice_in_the_env_file(tmp_path, lab) -> None:
    lab_file = Path(os.environ.get("ELEPHAAS_ENV_FILE", REPO / ".lab/elephaas.env"))
    env_file = tmp_path / "elephaas.env"
    # As systemd reads an EnvironmentFile: the later line wins.
    env_file.write_text(
        lab_file.read_text() + "ELEPHAAS_TIME_ZONE=UTC\nELEPHAAS_TIME_ZONE=Asia/Tokyo\n"
    )
    assert shown(tmp_path, ELEPHAAS_ENV_FILE=str(env_file))["TIME_ZONE"] == "Asia/Tokyo"
