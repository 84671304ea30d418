"""Accountants: Opacus golden values, composition, state round trip, validation."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from securefed.exceptions import ConfigError, PrivacyError, RegistryError, UnknownNameError
from securefed.privacy import (
    ACCOUNTANTS,
    Accountant,
    RDPAccountant,
    create_accountant,
    register_accountant,
)

SIGMA, Q, DELTA = 1.5, 0.04, 1e-5
# Opacus's tests (tests/accountants_test.py) use int(90 / 0.04) == 2250 steps for RDP
# but int(90 // 0.04) == 2249 steps for PRV and GDP (90 // 0.04 == 2249.0 in floats).
STEPS_RDP, STEPS_PRV_GDP = int(90 / 0.04), int(90 // 0.04)
ALL = ("rdp", "prv", "gdp", "pld")


def _eps(name: str, steps: int, sigma: float = SIGMA, q: float = Q) -> float:
    acc = create_accountant(name)
    acc.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    return acc.get_epsilon(DELTA)


@pytest.fixture(scope="module")
def golden() -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"rdp": _eps("rdp", STEPS_RDP), "prv": _eps("prv", STEPS_PRV_GDP),
                "gdp": _eps("gdp", STEPS_PRV_GDP), "pld": _eps("pld", STEPS_PRV_GDP)}


def test_registry_names_and_unknown_name() -> None:
    assert ACCOUNTANTS.names() == list(ALL)
    for name in ALL:
        acc = create_accountant(name)
        assert isinstance(acc, Accountant) and acc.mechanism == name
    with pytest.raises(UnknownNameError, match="valid choices: gdp, pld, prv, rdp"):
        create_accountant("moments")


def test_register_rejects_duplicates_and_mismatched_mechanism() -> None:
    with pytest.raises(RegistryError, match="already registered"):
        register_accountant("rdp", RDPAccountant)
    with pytest.raises(RegistryError, match="must match"):
        register_accountant("rdp2", RDPAccountant)
    with pytest.raises(RegistryError, match="Accountant subclass"):
        register_accountant("x", int)  # type: ignore[arg-type]


def test_golden_rdp(golden) -> None:
    assert golden["rdp"] == pytest.approx(7.32911117143, rel=1e-6)


def test_golden_prv(golden) -> None:
    assert golden["prv"] == pytest.approx(6.777395712150674, abs=1e-7)  # assertAlmostEqual


def test_golden_gdp(golden) -> None:
    assert 6.59 < golden["gdp"] < 6.6
    assert not create_accountant("gdp").is_upper_bound


def test_pld_close_to_prv_and_below_rdp(golden) -> None:
    assert golden["pld"] == pytest.approx(golden["prv"], rel=0.02)
    assert golden["pld"] <= golden["rdp"]
    assert golden["prv"] <= golden["rdp"]


@pytest.mark.parametrize("name", ALL)
def test_step_merging_equals_single_call(name: str) -> None:
    one = create_accountant(name)
    one.step(noise_multiplier=1.1, sample_rate=0.1, num_steps=30)
    many = create_accountant(name)
    for _ in range(30):
        many.step(noise_multiplier=1.1, sample_rate=0.1)
    assert many.history == one.history == ((1.1, 0.1, 30),)
    assert many.get_epsilon(DELTA) == one.get_epsilon(DELTA)


@pytest.mark.parametrize("name", ALL)
def test_epsilon_grows_with_steps(name: str) -> None:
    acc = create_accountant(name)
    assert acc.get_epsilon(DELTA) == 0.0
    eps = []
    for _ in range(3):
        acc.step(noise_multiplier=1.0, sample_rate=0.05, num_steps=20)
        eps.append(acc.get_epsilon(DELTA))
    assert 0 < eps[0] < eps[1] < eps[2]
    assert acc.num_steps == 60


@pytest.mark.parametrize("name", ALL)
def test_heterogeneous_composition_between_parts(name: str) -> None:
    acc = create_accountant(name)
    acc.step(noise_multiplier=1.0, sample_rate=0.05, num_steps=20)
    acc.step(noise_multiplier=2.0, sample_rate=0.1, num_steps=20)
    assert len(acc.history) == 2
    parts = [_eps(name, 20, 1.0, 0.05), _eps(name, 20, 2.0, 0.1)]
    assert max(parts) < acc.get_epsilon(DELTA) <= sum(parts) + 1e-9


@pytest.mark.parametrize("name", ALL)
def test_state_round_trip_through_json_continues_identically(name: str) -> None:
    acc = create_accountant(name)
    acc.step(noise_multiplier=0.9, sample_rate=0.03, num_steps=40)
    acc.step(noise_multiplier=1.3, sample_rate=0.03, num_steps=10)
    state = json.loads(json.dumps(acc.state_dict()))  # a process restart
    assert state["mechanism"] == name
    restored = create_accountant(name)
    restored.load_state_dict(state)
    assert restored.history == acc.history
    assert restored.get_epsilon(DELTA) == acc.get_epsilon(DELTA)
    for a in (acc, restored):
        a.step(noise_multiplier=1.3, sample_rate=0.03, num_steps=15)
    assert restored.history == acc.history
    assert restored.get_epsilon(DELTA) == acc.get_epsilon(DELTA)
    clone = acc.copy()
    clone.step(noise_multiplier=1.3, sample_rate=0.03)
    assert clone.num_steps == acc.num_steps + 1  # the copy is independent


@pytest.mark.parametrize(("src", "dst"), [("rdp", "prv"), ("prv", "rdp"), ("pld", "gdp"),
                                          ("gdp", "pld")])
def test_mismatched_mechanism_refused(src: str, dst: str) -> None:
    acc = create_accountant(src)
    acc.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=3)
    other = create_accountant(dst)
    with pytest.raises(PrivacyError, match=f"mechanism '{src}'"):
        other.load_state_dict(acc.state_dict())
    assert other.history == ()


@pytest.mark.parametrize("state", [
    {}, {"mechanism": "rdp"}, {"mechanism": "rdp", "version": 99, "history": []},
    {"mechanism": "rdp", "version": 1, "history": "x"},
    {"mechanism": "rdp", "version": 1, "history": [[1.0, 0.1]]},
    {"mechanism": "rdp", "version": 1, "history": [[1.0, 1.5, 3]]},
    {"mechanism": "rdp", "version": 1, "history": [[-1.0, 0.5, 3]]},
    {"mechanism": "rdp", "version": 1, "history": [[1.0, 0.5, 0]]},
])
def test_malformed_state_refused(state) -> None:
    with pytest.raises(PrivacyError):
        create_accountant("rdp").load_state_dict(state)


def test_load_into_used_accountant_refused() -> None:
    acc = create_accountant("rdp")
    acc.step(noise_multiplier=1.0, sample_rate=0.1)
    with pytest.raises(PrivacyError, match="already holds 1 steps"):
        acc.load_state_dict(create_accountant("rdp").state_dict())


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"noise_multiplier": 0.0, "sample_rate": 0.1}, "noise_multiplier"),
    ({"noise_multiplier": -1.0, "sample_rate": 0.1}, "noise_multiplier"),
    ({"noise_multiplier": math.inf, "sample_rate": 0.1}, "noise_multiplier"),
    ({"noise_multiplier": math.nan, "sample_rate": 0.1}, "noise_multiplier"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.0}, "sample_rate"),
    ({"noise_multiplier": 1.0, "sample_rate": 1.5}, "sample_rate"),
    ({"noise_multiplier": 1.0, "sample_rate": math.nan}, "sample_rate"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "num_steps": 0}, "num_steps"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "num_steps": 2.0}, "num_steps"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "num_steps": True}, "num_steps"),
])
def test_step_validation_names_argument(kwargs, arg: str) -> None:
    acc = create_accountant("rdp")
    with pytest.raises(ConfigError, match=arg):
        acc.step(**kwargs)
    assert acc.history == ()


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, math.nan])
def test_delta_validation(delta: float) -> None:
    acc = create_accountant("rdp")
    acc.step(noise_multiplier=1.0, sample_rate=0.1)
    with pytest.raises(ConfigError, match="delta"):
        acc.get_epsilon(delta)


def test_sample_rate_one_is_allowed() -> None:
    assert _eps("rdp", 1, sigma=1.0, q=1.0) > 0
