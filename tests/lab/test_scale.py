"""The scale profile's layout and how a lab folder picks its profile (pure: no lab)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lab import scale, state
from lab.errors import LabError


@pytest.mark.parametrize("servers", [1, 2, 3, 7, 8, 40, 250])
def test_it_puts_exactly_five_instances_on_every_server(servers):
    plans = scale.layout(servers)
    load = Counter(n for plan in plans for n in plan.members)
    assert sorted(load) == list(range(1, servers + 1))
    assert set(load.values()) == {scale.PER_SERVER}


def test_it_lays_out_sixty_herds_of_two_hundred_instances_on_forty_servers():
    plans = scale.layout(40)
    assert len(plans) == 60
    assert sum(len(p.members) for p in plans) == 200
    assert sum(len(p.replicas) for p in plans) == 140
    assert Counter(len(p.replicas) for p in plans) == {3: 20, 2: 40}
    # Primaries are spread: no server holds more than two.
    assert max(Counter(p.primary for p in plans).values()) <= 2


@pytest.mark.parametrize("servers", [1, 2, 3, 40])
def test_it_never_puts_two_members_of_a_herd_on_one_server(servers):
    for plan in scale.layout(servers):
        assert len(set(plan.members)) == len(plan.members)


def test_it_gives_every_herd_its_own_port_and_name():
    plans = scale.layout(40)
    assert len({p.port for p in plans}) == len({p.name for p in plans}) == len(plans)


def test_it_refuses_an_empty_layout():
    with pytest.raises(LabError):
        scale.layout(0)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for variable in ["LAB_DIR", "LAB_PROFILE", *state.OVERRIDES.values()]:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LAB_DIR", str(tmp_path))
    return tmp_path


def test_it_reads_the_profile_a_lab_folder_recorded(clean_env):
    (clean_env / "lab.json").write_text(
        json.dumps({"name": "scale", "address_prefix": "127.0.9", "meta_port": 1234})
    )
    profile, lab_dir = state.load()
    assert lab_dir == clean_env
    assert (profile.name, profile.address_prefix, profile.meta_port) == ("scale", "127.0.9", 1234)
    assert profile.redis_port == state.PROFILES["scale"].redis_port


def test_it_lets_a_variable_override_what_was_recorded(clean_env, monkeypatch):
    (clean_env / "lab.json").write_text(json.dumps({"name": "scale", "meta_port": 1234}))
    monkeypatch.setenv("LAB_META_PORT", "4321")
    monkeypatch.setenv("LAB_ADDRESS_PREFIX", "127.3.4")
    profile, _ = state.load()
    assert (profile.meta_port, profile.address_prefix) == (4321, "127.3.4")


def test_it_defaults_to_the_default_lab_on_127_0_1(clean_env):
    profile, _ = state.load()
    assert (profile.name, profile.address_prefix) == ("default", "127.0.1")
    assert profile.meta_port == 54329


def test_it_refuses_a_profile_other_than_the_folders(clean_env, monkeypatch):
    (clean_env / "lab.json").write_text(json.dumps({"name": "default"}))
    monkeypatch.setenv("LAB_PROFILE", "scale")
    with pytest.raises(LabError, match="holds a 'default' lab, not 'scale'"):
        state.load()


@pytest.mark.parametrize("prefix", ["10.0.2", "127.0.2.1", "127.0", "127.256.0", "127.0.x"])
def test_it_refuses_an_address_prefix_off_loopback_or_malformed(clean_env, monkeypatch, prefix):
    monkeypatch.setenv("LAB_ADDRESS_PREFIX", prefix)
    with pytest.raises(LabError, match="address prefix"):
        state.load()
