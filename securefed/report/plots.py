"""Plots of a run: accuracy, loss and epsilon against round (matplotlib, no display).

Every figure is written twice, as ``NAME.png`` and ``NAME.svg`` (text kept as text in the
SVG, so titles stay searchable and editable). Titles carry what distinguishes one run
from another: method, backbone, dataset, secure mode and the epsilon target of
sample-level and user-level DP (:class:`RunFacts`). Rounds are integer ticks, and
``epsilon.png`` draws each enabled budget as a dashed horizontal line.

:class:`RunFacts` is built from a config (``ExperimentConfig`` or the mapping of a run's
``config.toml``), or from ``summary.json`` when the config is missing, so that
``securefed report`` regenerates the plots from the run directory's files alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from securefed.config import ExperimentConfig

__all__ = ["FORMATS", "RunFacts", "new_figure", "plot_run", "round_axis", "save_figure",
           "series"]

#: Every figure is written in each of these formats, side by side.
FORMATS = ("png", "svg")

_DEFAULT_EPSILON = 8.0  # DPConfig / UserDPConfig default target_epsilon


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _backbone_label(name: str) -> str:
    """An alias or hub id as is; a local folder by its last component only."""
    path = Path(name)
    return path.name if path.is_absolute() or name.startswith(".") else name


@dataclass(frozen=True)
class RunFacts:
    """What a plot's title and a legend say about a run.

    Attributes
    ----------
    method, backbone, dataset, secure_mode : str
        ``[method] name``, ``[model] backbone`` (a local folder by its name only),
        ``[data] dataset`` and ``[secure] mode``.
    dp_target, dp_budget : float or None
        Sample-level DP: the calibration target epsilon (None when an explicit noise
        multiplier is given) and the hard per-client budget; both None without ``[dp]``.
    dp_noise : float or None
        The explicit sample-level noise multiplier, if one was given.
    user_target, user_budget, user_noise : float or None
        The same for user-level DP (``[user_dp]``).
    """

    method: str = "?"
    backbone: str = "?"
    dataset: str = "?"
    secure_mode: str = "none"
    dp_target: float | None = None
    dp_budget: float | None = None
    dp_noise: float | None = None
    user_target: float | None = None
    user_budget: float | None = None
    user_noise: float | None = None

    @classmethod
    def from_config(cls, config: ExperimentConfig | Mapping[str, Any]) -> RunFacts:
        """Facts of a config, or of the mapping parsed from a run's ``config.toml``."""
        tree: Mapping[str, Any] = config if isinstance(config, Mapping) else config.to_dict()

        def table(name: str) -> Mapping[str, Any]:
            value = tree.get(name, {})
            return value if isinstance(value, Mapping) else {}

        dp, user = table("dp"), table("user_dp")
        dp_on = dp.get("mode", "none") != "none"
        user_on = user.get("clipping", "none") != "none"
        facts: dict[str, Any] = {}
        for prefix, on, t in (("dp", dp_on, dp), ("user", user_on, user)):
            if not on:
                continue
            target = float(t.get("target_epsilon", _DEFAULT_EPSILON))
            noise = float(t.get("noise_multiplier", 0.0))
            facts[f"{prefix}_target"] = None if noise > 0 else target
            facts[f"{prefix}_noise"] = noise if noise > 0 else None
            facts[f"{prefix}_budget"] = float(t.get("budget_epsilon", 0.0)) or target
        return cls(
            method=str(table("method").get("name", "?")),
            backbone=_backbone_label(str(table("model").get("backbone", "?"))),
            dataset=str(table("data").get("dataset", "?")),
            secure_mode=str(table("secure").get("mode", "none")),
            **facts,
        )

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> RunFacts:
        """Facts from ``summary.json`` alone (no targets or budgets: it records none)."""
        return cls(
            method=str(summary.get("method", "?")),
            backbone=_backbone_label(str(summary.get("backbone", "?"))),
            dataset=str(summary.get("dataset", "?")),
            secure_mode=str(summary.get("secure_mode") or "none"),
        )

    @staticmethod
    def _dp_text(level: str, target: float | None, budget: float | None,
                 noise: float | None) -> str:
        if budget is None:
            return f"no {level} DP"
        if target is None:
            return f"{level} DP σ={noise:g}, ε budget {budget:g}"
        extra = f" (budget {budget:g})" if budget != target else ""
        return f"{level} DP ε target {target:g}{extra}"

    @property
    def privacy(self) -> str:
        """``secure: MODE · <sample-level DP> · <user-level DP>``."""
        return " · ".join((
            f"secure: {self.secure_mode}",
            self._dp_text("sample-level", self.dp_target, self.dp_budget, self.dp_noise),
            self._dp_text("user-level", self.user_target, self.user_budget, self.user_noise),
        ))

    def title(self, subject: str = "") -> str:
        """Two lines: ``[subject: ]method · backbone · dataset`` and :attr:`privacy`."""
        head = f"{self.method} · {self.backbone} · {self.dataset}"
        return f"{subject}: {head}\n{self.privacy}" if subject else f"{head}\n{self.privacy}"

    def short(self) -> str:
        """A legend fragment: ``method, secure mode, ε targets``."""
        parts = [self.method, self.secure_mode if self.secure_mode != "none" else "plain"]
        if self.dp_budget is not None:
            parts.append(f"sample ε≤{self.dp_budget:g}")
        if self.user_budget is not None:
            parts.append(f"user ε≤{self.user_budget:g}")
        return ", ".join(parts)


def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """``(rounds, values)`` of the rows where ``key`` is present and not None."""
    pts = [(int(r["round"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def new_figure() -> tuple[Figure, Axes]:
    """A figure with one axes, sized for a report."""
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=110)
    return fig, ax


def round_axis(ax: Axes, ylabel: str, title: str) -> None:
    """Label the axes; rounds on integer ticks; grid, title and legend."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` (text as text, no timestamp); close ``fig``."""
    fig.tight_layout()
    paths = []
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "securefed"}):
        for fmt in FORMATS:
            path = out_dir / f"{name}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else None
            fig.savefig(path, format=fmt, metadata=metadata)
            paths.append(path)
    plt.close(fig)
    return paths


def plot_run(rows: Sequence[Mapping[str, Any]], out_dir: Path,
             facts: RunFacts | None = None) -> list[Path]:
    """Write ``accuracy``, ``loss`` and (with DP) ``epsilon`` plots from ``metrics.jsonl`` rows.

    Central (held-out split), federated (clients' validation splits) and client-train
    curves are drawn where present. ``epsilon`` is written when a row has an epsilon or
    ``facts`` has a DP budget; each budget is a dashed horizontal line.

    Parameters
    ----------
    rows : sequence of mapping
        ``metrics.jsonl`` rows (``round`` and the metrics).
    out_dir : Path
        Where the figures go (created if missing).
    facts : RunFacts, optional
        What the titles say; defaults to an unknown run.

    Returns
    -------
    list of Path
        Every file written (a PNG and an SVG per figure).
    """
    facts = facts or RunFacts()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for metric, label in (("accuracy", "accuracy"), ("loss", "cross-entropy loss")):
        fig, ax = new_figure()
        for key, name in ((metric, "central (held-out)"),
                          (f"federated_{metric}", "federated (client val)"),
                          (f"train_{metric}", "client train")):
            xs, ys = series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o", label=name)
        round_axis(ax, label, facts.title(metric))
        written += save_figure(fig, out_dir, metric)
    curves = [(series(rows, key), name, budget, colour) for key, name, budget, colour in (
        ("epsilon", "largest client ε (sample-level)", facts.dp_budget, "C0"),
        ("user_epsilon", "user-level ε (server)", facts.user_budget, "C1"))]
    if any(xs or budget is not None for (xs, _), _, budget, _ in curves):
        fig, ax = new_figure()
        top = max([*(v for (_, ys), *_ in curves for v in ys),
                   *(b for *_, b, _ in curves if b is not None), 1.0])
        for (xs, ys), name, budget, colour in curves:
            if xs:
                ax.plot(xs, ys, marker="o", label=name, color=colour)
            if budget is not None:
                level = "sample-level" if colour == "C0" else "user-level"
                ax.axhline(budget, linestyle="--", color=colour, alpha=0.8,
                           label=f"{level} budget ε = {budget:g}")
        ax.set_ylim(0, top * 1.1)  # room above the budget line
        round_axis(ax, "epsilon", facts.title("privacy"))
        written += save_figure(fig, out_dir, "epsilon")
    return written
