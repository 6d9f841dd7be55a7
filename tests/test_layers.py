"""The layer rules of DESIGN.md as import-linter contracts (.importlinter), run in the
suite: a new import circle, an upward import or an admin module reaching the SSH, probe
or DNS boundary fails CI here.

The second test proves the contracts can fail: it copies the packages, adds each kind of
forbidden import, and checks that lint-imports names the broken contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("elephaas", "herds", "instances")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
        check=False,
    )


def test_it_keeps_every_layer_contract():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "7 kept, 0 broken" in done.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # The circle of the old tree: the runner importing the operations to register them.
        ("instances/jobs/runner.py", "from instances import lifecycle", "imports no operation"),
        # The instance app taking steps from the herd app (old rebuild.py → herds.drills).
        ("instances/rebuild.py", "from herds import drill", "instances never imports herds"),
        ("instances/steps.py", "from instances import rebuild", "Layers"),
        # Two modules of one layer importing each other.
        ("instances/wal.py", "from instances import rebuild_planning", "No import circle"),
        # Admin doing I/O inside a request.
        ("herds/admin/refresh_dns.py", "from herds import dns", "Admin validates"),
        ("instances/admin/rebuild.py", "from instances import probe", "Admin validates"),
        ("herds/planning.py", "import paramiko", "paramiko is imported only"),
    ],
)
def test_it_fails_on_each_kind_of_forbidden_import(copy, module, line, broken):
    path = copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # noqa\n")
        done = lint(copy)
    finally:
        path.write_text(original)
    assert done.returncode != 0
    broken_section = done.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section, done.stdout[-3000:]
