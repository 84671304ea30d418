"""Plots: titles that tell runs apart, integer rounds, budget lines, SVG beside PNG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from securefed.config import ExperimentConfig
from securefed.report import plots
from securefed.report.plots import RunFacts, plot_run

ROWS: list[dict[str, Any]] = [
    {"round": 0, "accuracy": 0.2, "loss": 1.6},
    {"round": 1, "accuracy": 0.5, "loss": 1.2, "train_loss": 1.3, "epsilon": 2.5,
     "user_epsilon": 1.0},
    {"round": 2, "accuracy": 0.7, "loss": 0.9, "train_loss": 1.0, "epsilon": 2.9,
     "user_epsilon": 1.5},
]

PRIVATE = {
    "method": {"name": "ffa-lora"}, "model": {"backbone": "minilm-l6"},
    "data": {"dataset": "tweet-sentiment"}, "secure": {"mode": "secagg"},
    "dp": {"mode": "sample", "target_epsilon": 3.0},
    "user_dp": {"clipping": "client-fixed", "target_epsilon": 2.0, "budget_epsilon": 4.0},
}


@pytest.fixture
def figures(monkeypatch) -> dict[str, Figure]:
    """Every figure plot_run saves, by name (captured before it is closed)."""
    captured: dict[str, Figure] = {}
    save = plots.save_figure

    def capture(fig: Figure, out_dir: Path, name: str) -> list[Path]:
        captured[name] = fig
        return save(fig, out_dir, name)

    monkeypatch.setattr(plots, "save_figure", capture)
    return captured


def svg_text(path: Path) -> str:
    """All text of an SVG (titles, legends, tick labels), space-joined."""
    return " ".join(t for el in ET.parse(path).iter() if el.tag.endswith("text")
                    for t in el.itertext())


def test_facts_of_a_default_config_say_plain_and_no_dp() -> None:
    facts = RunFacts.from_config(ExperimentConfig())
    assert facts.title() == ("lora · minilm-l6 · bbc-news\n"
                             "secure: none · no sample-level DP · no user-level DP")
    assert facts.dp_budget is None and facts.user_budget is None


def test_facts_name_secure_mode_and_both_epsilon_targets() -> None:
    facts = RunFacts.from_config(PRIVATE)
    title = facts.title("accuracy")
    for part in ("ffa-lora", "minilm-l6", "tweet-sentiment", "secure: secagg",
                 "sample-level DP ε target 3", "user-level DP ε target 2 (budget 4)"):
        assert part in title, part
    assert (facts.dp_budget, facts.user_budget) == (3.0, 4.0)
    explicit = RunFacts.from_config({"dp": {"mode": "sample", "noise_multiplier": 1.1}})
    assert "sample-level DP σ=1.1, ε budget 8" in explicit.privacy  # no target: not calibrated


def test_a_local_backbone_folder_is_titled_by_its_name(tmp_path) -> None:
    facts = RunFacts.from_config({"model": {"backbone": str(tmp_path / "tiny-bert")}})
    assert facts.backbone == "tiny-bert" and str(tmp_path) not in facts.title()


def test_plot_run_titles_integer_rounds_budgets_and_svg(tmp_path, figures) -> None:
    written = plot_run(ROWS, tmp_path, RunFacts.from_config(PRIVATE))
    names = {p.name for p in written}
    assert names == {f"{n}.{ext}" for n in ("accuracy", "loss", "epsilon")
                     for ext in ("png", "svg")}
    assert all(p.stat().st_size > 0 for p in written)
    for name, fig in figures.items():
        ax = fig.axes[0]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
        assert "secure: secagg" in ax.get_title() and "ffa-lora" in ax.get_title()
    eps = figures["epsilon"].axes[0]
    flat = {tuple(line.get_ydata()) for line in eps.lines if line.get_linestyle() == "--"}
    assert flat == {(3.0, 3.0), (4.0, 4.0)}  # both budgets, as horizontal lines
    assert eps.get_ylim()[1] > 4.0  # the highest budget is inside the axes
    text = svg_text(tmp_path / "epsilon.svg")
    for part in ("sample-level budget ε = 3", "user-level budget ε = 4",
                 "user-level DP ε target 2 (budget 4)", "tweet-sentiment"):
        assert part in text, part


def test_short_runs_get_integer_round_ticks(tmp_path, figures) -> None:
    plot_run(ROWS[:2], tmp_path, RunFacts())  # rounds 0 and 1 only
    ticks = figures["accuracy"].axes[0].get_xticks()
    assert set(ticks) <= {-1.0, 0.0, 1.0, 2.0}, ticks


def test_epsilon_is_plotted_with_dp_and_only_then(tmp_path) -> None:
    plain = [{k: v for k, v in r.items() if "epsilon" not in k} for r in ROWS]
    assert not any(p.stem == "epsilon" for p in plot_run(plain, tmp_path / "a", RunFacts()))
    budget_only = RunFacts.from_config({"dp": {"mode": "sample"}})
    assert (tmp_path / "b" / "epsilon.svg") in plot_run(plain, tmp_path / "b", budget_only)
