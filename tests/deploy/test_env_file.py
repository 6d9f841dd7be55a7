"""The settings are listed in four places that must agree: the README's Settings table, the
code that reads them, elephaas/local_settings.example.py and the package's
/etc/elephaas/elephaas.env (debian/elephaas.env). A variable added to one and not to the
others fails here, before a controller is configured from a file that lacks it.

Pure: reads files only.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_LINE = re.compile(r"^(#?)(ELEPHAAS_\w+)=(.*)$")


def readme_table() -> dict[str, tuple[str, bool]]:
    """{name: (default as written, takes a _FILE)} from the README's Settings table."""
    section = (REPO / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `(ELEPHAAS_\w+)`( / `_FILE`)? \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = (match.group(3).strip(), bool(match.group(2)))
    return rows


def env_file_lines() -> dict[str, list[tuple[bool, bool, str]]]:
    """{name: [(commented, is _FILE, value)]} of every assignment in debian/elephaas.env."""
    table = readme_table()
    found: dict[str, list[tuple[bool, bool, str]]] = {}
    for line in (REPO / "debian" / "elephaas.env").read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            commented, name, value = match.groups()
            # ELEPHAAS_ENV_FILE is a name of its own; ELEPHAAS_DB_PASSWORD_FILE a secret's.
            is_file = name not in table and name.endswith("_FILE")
            name = name.removesuffix("_FILE") if is_file else name
            found.setdefault(name, []).append((bool(commented), is_file, value))
    return found


def test_it_reads_the_readme_table() -> None:
    table = readme_table()
    # The table's first and last rows, and one with a secret: the parser sees them all.
    assert "ELEPHAAS_ENV_FILE" in table and "ELEPHAAS_LOG_LEVEL" in table
    assert table["ELEPHAAS_DB_PASSWORD"] == ("(empty)", True)
    assert len(table) > 80


def test_the_env_file_lists_every_setting_once() -> None:
    table, env = readme_table(), env_file_lines()
    assert sorted(set(table) - set(env)) == []
    assert sorted(set(env) - set(table)) == []
    assert {name: len(lines) for name, lines in env.items() if len(lines) != 1} == {}


def test_the_env_file_gives_each_default() -> None:
    table, env = readme_table(), env_file_lines()
    wrong = {}
    for name, (default, _) in table.items():
        commented, is_file, value = env[name][0]
        if is_file:
            continue  # a suggested place for the secret's file, not a default
        literal = re.fullmatch(r"`([^`]*)`", default)
        if commented and literal and value != literal.group(1):
            wrong[name] = (value, literal.group(1))
        if commented and not literal and value:
            wrong[name] = (value, default)
    assert wrong == {}


def test_the_env_file_names_secrets_only_as_files() -> None:
    table, env = readme_table(), env_file_lines()
    secrets = {name for name, (_, has_file) in table.items() if has_file}
    assert secrets, "the README marks no secret"
    assert {name for name in secrets if not env[name][0][1]} == set()
    # What the package sets itself, uncommented: only paths it creates.
    assert {name: lines[0][2] for name, lines in env.items() if not lines[0][0]} == {
        "ELEPHAAS_SECRET_KEY": "/etc/elephaas/secret_key",
        "ELEPHAAS_STATIC_ROOT": "/var/lib/elephaas/static",
    }


def test_the_code_reads_every_setting_of_the_table() -> None:
    code = "".join(
        path.read_text()
        for path in (REPO / "elephaas").glob("*.py")
        if path.name != "local_settings.example.py"
    )
    read = set(re.findall(r'"(ELEPHAAS_[A-Z0-9_]+)"', code))
    table = set(readme_table())
    assert sorted(table - read) == []
    assert sorted(read - table) == []


def test_the_example_local_settings_mention_every_setting() -> None:
    example = (REPO / "elephaas" / "local_settings.example.py").read_text()
    assert [name for name in readme_table() if name not in example] == []
