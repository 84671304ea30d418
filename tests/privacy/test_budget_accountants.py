"""Finding 7: the ``gdp`` approximation never decides a budget or a noise multiplier."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from securefed.config import ExperimentConfig
from securefed.exceptions import ConfigError, UnknownNameError
from securefed.privacy.accountants import (
    BUDGET_ACCOUNTANTS,
    check_budget_accountant,
    create_accountant,
    create_budget_accountant,
)

VALID = "valid accountants: pld, prv, rdp"


def test_budget_accountants_are_the_upper_bounds() -> None:
    assert BUDGET_ACCOUNTANTS == ("pld", "prv", "rdp")
    for name in BUDGET_ACCOUNTANTS:
        assert create_budget_accountant(name).is_upper_bound
    assert not create_accountant("gdp").is_upper_bound  # still creatable for printing


def test_gdp_is_refused_for_budgets() -> None:
    with pytest.raises(ConfigError, match=VALID):
        create_budget_accountant("gdp")
    with pytest.raises(ConfigError, match=r"\[dp\] accountant = 'gdp' is an approximation"):
        check_budget_accountant("gdp", "[dp] accountant")
    with pytest.raises(UnknownNameError, match="valid choices"):
        check_budget_accountant("moments")


@pytest.mark.parametrize(("table", "values"), [
    ("dp", {"mode": "sample"}),
    ("dp", {"mode": "none"}),  # refused even while off: the table must stay valid
    ("user_dp", {"clipping": "server-fixed"}),
])
def test_config_tables_refuse_gdp(table, values) -> None:
    with pytest.raises(ConfigError, match=rf"\[{table}\] accountant = 'gdp'.*{VALID}"):
        ExperimentConfig.from_dict({table: {**values, "accountant": "gdp"}})


def test_a_stored_client_ledger_cannot_smuggle_gdp_in(tmp_path) -> None:
    """Even a config object built around validation cannot make a client budget with gdp."""
    from securefed.app.private_training import load_accountant

    cfg = ExperimentConfig.from_dict({"dp": {"mode": "sample"}})
    object.__setattr__(cfg.dp, "accountant", "gdp")  # bypass __post_init__
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match=VALID):
        load_accountant(ctx, cfg, 0)
