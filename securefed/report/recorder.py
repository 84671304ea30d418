"""Run-directory outputs: ``metrics.jsonl``, ``metrics.csv``, ``summary.json``.

A :class:`RunRecorder` observes the strategy (bytes, rejections, client metrics) and
the ServerApp's central evaluation, and writes one JSON line per round::

    {"round": 3, "accuracy": 0.91, "loss": 0.31,            # central, held-out split
     "federated_accuracy": 0.9, "federated_loss": 0.33,      # clients' local val splits
     "train_loss": 0.4,
     "clients": [{"partition_id": 0, "node_id": 8214..}, ..],   # in the aggregate
     "rejected": [{"partition_id": 4, "node_id": 1932.., "reason": "..."}],
     "rejected_replies": 1, "bytes_up_per_client": 295000.0,
     "bytes_down_per_client": 295000, "round_seconds": 41.2, "wall_seconds": 130.0}

Round 0 is the initial global adapter (central evaluation only). Clients are named by
**partition id** (the shard of ``partitions.json`` they train on, stable from run to
run), with Flower's node id (random in every run) beside it; lists are in
partition-id order. A node excluded by the identity check (``strategies.identities``)
is listed in the first row after it was, under ``excluded_nodes``. The same
``partition_id`` is in every ``privacy.jsonl`` row and capture ``meta.json``. ``summary.json`` keys
are a stable interface read by other tools; see :data:`SUMMARY_KEYS`. :meth:`summary`
also writes the rows as ``metrics.csv`` (:mod:`securefed.report.metrics_csv`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from securefed.report.metrics_csv import write_metrics_csv
from strategies.adapter_fedavg import TrainRoundStats

__all__ = ["SUMMARY_KEYS", "RunRecorder", "read_metrics"]

SUMMARY_KEYS = (
    "method",
    "backbone",
    "dataset",
    "num_clients",
    "rounds",
    "final_accuracy",
    "accuracy_per_round",
    "trainable_params",
    "bytes_up_per_client_round",
    "bytes_down_per_client_round",
    "wall_seconds",
    "adapter_dir",
    "epsilon",
    "user_level_epsilon",
    "delta",
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse a ``metrics.jsonl`` file (missing file -> no rows)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunRecorder:
    """Collects per-round statistics and writes them under ``run_dir``.

    Parameters
    ----------
    run_dir : Path
        The run directory (created if missing).
    """

    def __init__(self, run_dir: Path, *, capture: tuple[int, int] | None = None) -> None:
        self.run_dir = run_dir
        self.capture = capture
        self.captured: list[Path] = []
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.metrics_path.write_text("")
        self.started = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, Any]] = {}
        self.ledger_path = run_dir / "privacy.jsonl"
        self.max_epsilon: float | None = None
        self.delta: float | None = None
        self.user_epsilon: float | None = None
        self.user_delta: float | None = None
        self._partition_of: dict[int, int] = {}
        self._excluded: dict[int, str] = {}
        self._new_exclusions: dict[int, str] = {}  # not yet written to a row

    # ------------------------------------------------------------ identities
    def on_identities(self, partitions: Mapping[int, int],
                      excluded: Mapping[int, str]) -> None:
        """The strategy's ``{node id: partition id}`` map and the nodes it excluded."""
        self._partition_of.update({int(n): int(p) for n, p in partitions.items()})
        new = {int(n): r for n, r in excluded.items() if self._excluded.get(int(n)) != r}
        self._excluded.update(new)
        self._new_exclusions.update(new)

    def partition_of(self, node: int) -> int | None:
        """The partition id of ``node``, as the strategy identified it (None: unknown)."""
        return self._partition_of.get(int(node))

    def _client(self, node: int, partitions: Mapping[int, int | None] | None = None
                ) -> dict[str, Any]:
        pid = (partitions or {}).get(node)
        return {"partition_id": self.partition_of(node) if pid is None else pid,
                "node_id": int(node)}

    def _order(self, node: int) -> tuple[int, int]:
        pid = self.partition_of(node)
        return (pid, 0) if pid is not None else (2**63, int(node))

    def _reasons(self, reasons: Mapping[int, str],
                 partitions: Mapping[int, int | None] | None = None) -> list[dict[str, Any]]:
        return [{**self._client(n, partitions), "reason": r}
                for n, r in sorted(reasons.items(), key=lambda item: self._order(item[0]))]

    # ------------------------------------------------------------ observer API
    def on_train_round(self, stats: TrainRoundStats) -> None:
        """Record bytes, participants and rejections of a training round."""
        ups = list(stats.bytes_up.values())
        row = self._pending.setdefault(stats.server_round, {"round": stats.server_round})
        if self._new_exclusions:
            row["excluded_nodes"] = self._reasons(self._new_exclusions)
            self._new_exclusions = {}
        row.update(
            clients=[self._client(n, stats.partitions)
                     for n in sorted(stats.accepted, key=self._order)],
            rejected=self._reasons(stats.rejected, stats.partitions),
            rejected_replies=len(stats.rejected),
            train_loss=stats.metrics.get("train-loss"),
            train_accuracy=stats.metrics.get("train-accuracy"),
            bytes_up_per_client=(sum(ups) / len(ups)) if ups else 0.0,
            bytes_down_per_client=stats.bytes_down_per_client,
            round_seconds=stats.seconds,
        )
        if stats.extra:
            row["secure"] = stats.extra

    def on_client_metrics(self, server_round: int, node: int,
                          metrics: Mapping[str, float]) -> None:
        """Append a client's DP ledger row to ``privacy.jsonl`` (if it trained with DP).

        One row per round and client: sample-level epsilon after the round, delta,
        noise multiplier, clip norm, sample rate, steps this round and in total.
        """
        if "dp-epsilon" not in metrics:
            return
        row: dict[str, Any] = {"round": server_round, "level": "sample",
                               "partition_id": self.partition_of(node), "node": node}
        for key in ("epsilon", "delta", "noise-multiplier", "clip-norm", "sample-rate",
                    "steps", "total-steps"):
            value = metrics.get(f"dp-{key}")
            row[key.replace("-", "_")] = value
        self._ledger(row)
        eps = float(metrics["dp-epsilon"])
        self.max_epsilon = eps if self.max_epsilon is None else max(self.max_epsilon, eps)
        self.delta = float(metrics.get("dp-delta", 0.0)) or self.delta
        pending = self._pending.setdefault(server_round, {"round": server_round})
        pending["epsilon"] = self.max_epsilon

    def _ledger(self, row: Mapping[str, Any]) -> None:
        with self.ledger_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_user_privacy(self, server_round: int, row: Mapping[str, Any]) -> None:
        """Append the server's user-level ledger row of a released round.

        User-level epsilon after the round, delta, noise multiplier ``z`` (and the part
        on the update under adaptive clipping), clip norm, client sample rate, clients
        in the aggregate and the fixed denominator.
        """
        self._ledger({"round": server_round, "level": "user", **row})
        self.user_epsilon = float(row["user_epsilon"])
        self.user_delta = float(row["user_delta"])
        pending = self._pending.setdefault(server_round, {"round": server_round})
        pending["user_epsilon"] = self.user_epsilon

    def privacy_facts(self) -> dict[str, Any]:
        """``summary.json``'s privacy keys: the largest sample-level epsilon of any client,
        the user-level epsilon of the released model, and delta (sample-level delta, or
        the user-level one without DP-SGD); ``None`` where that DP is off."""
        return {"epsilon": self.max_epsilon, "delta": self.delta or self.user_delta,
                "user_level_epsilon": self.user_epsilon, "user_level_delta": self.user_delta}

    def on_evaluate_round(self, server_round: int, metrics: Mapping[str, float],
                          rejected: Mapping[int, str]) -> None:
        """Record federated evaluation (clients' local validation splits)."""
        row = self._pending.setdefault(server_round, {"round": server_round})
        row.update(
            federated_accuracy=metrics.get("eval-accuracy"),
            federated_loss=metrics.get("eval-loss"),
            evaluate_rejected=self._reasons(rejected),
        )

    def _capture_dir(self, server_round: int, position: int) -> Path | None:
        """The capture folder if ``(round, position)`` is the one to capture, else None."""
        if self.capture != (server_round, position):
            return None
        out = self.run_dir / "captures" / f"round-{server_round}-client-{position}"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def on_reply(self, server_round: int, position: int, node: int,
                 payload: Mapping[str, np.ndarray], weight: float,
                 global_payload: Mapping[str, np.ndarray]) -> None:
        """Save the reply chosen by ``capture = (round, client_index)``, if this is it.

        Writes ``captures/round-R-client-I/`` with ``payload.safetensors`` (the reply
        exactly as received), ``global.safetensors`` (what the server had sent that
        client) and ``meta.json`` (round, sample position, partition id, node id,
        num-examples).
        """
        out = self._capture_dir(server_round, position)
        if out is None:
            return
        save_file({k: np.ascontiguousarray(v) for k, v in payload.items()},
                  str(out / "payload.safetensors"))
        save_file({k: np.ascontiguousarray(v) for k, v in global_payload.items()},
                  str(out / "global.safetensors"))
        (out / "meta.json").write_text(json.dumps({
            "round": server_round, "client_index": position,
            "partition_id": self.partition_of(node), "node_id": node,
            "num_examples": weight, "threat_model": "honest-but-curious server, "
            "plaintext aggregation (no secure aggregation, no DP)"}, indent=2) + "\n")
        self.captured.append(out)

    def on_masked_reply(self, server_round: int, position: int, node: int,
                        masked: np.ndarray, meta: Mapping[str, Any]) -> None:
        """Save the masked input chosen by ``capture``: the server's view under SecAgg+.

        Writes ``captures/round-R-client-I/`` with ``masked.safetensors`` (the uint64
        vector in ``Z_{2^bits}`` exactly as received: uniformly random without the
        other clients' masks) and ``meta.json``.
        """
        out = self._capture_dir(server_round, position)
        if out is None:
            return
        save_file({"masked_input": np.ascontiguousarray(masked)},
                  str(out / "masked.safetensors"))
        (out / "meta.json").write_text(json.dumps({
            "round": server_round, "client_index": position,
            "partition_id": self.partition_of(node), "node_id": node, **dict(meta),
            "threat_model": "honest-but-curious server under SecAgg+: "
            "sees masked inputs and the sum of the survivors only"}, indent=2) + "\n")
        self.captured.append(out)

    def on_central_eval(self, server_round: int, accuracy: float | None,
                        loss: float | None) -> dict[str, Any]:
        """Record central evaluation and flush the round's row to ``metrics.jsonl``."""
        row = self._pending.pop(server_round, {"round": server_round})
        row.update(accuracy=accuracy, loss=loss,
                   wall_seconds=time.monotonic() - self.started)
        self.rows.append(row)
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return row

    # ---------------------------------------------------------------- summary
    def summary(self, **fields: Any) -> dict[str, Any]:
        """Assemble ``summary.json`` from the rows plus run facts, and write it (and
        ``metrics.csv``)."""
        trained = [r for r in self.rows if r["round"] > 0]
        ups = [r["bytes_up_per_client"] for r in trained if r.get("bytes_up_per_client")]
        downs = [r["bytes_down_per_client"] for r in trained
                 if r.get("bytes_down_per_client")]
        summary: dict[str, Any] = {
            "final_accuracy": self.rows[-1].get("accuracy") if self.rows else None,
            "accuracy_per_round": [r.get("accuracy") for r in self.rows],
            "loss_per_round": [r.get("loss") for r in self.rows],
            "federated_accuracy_per_round": [r.get("federated_accuracy") for r in trained],
            "bytes_up_per_client_round": (sum(ups) / len(ups)) if ups else 0.0,
            "bytes_down_per_client_round": (sum(downs) / len(downs)) if downs else 0.0,
            "rejected_replies_total": sum(r.get("rejected_replies", 0) for r in trained),
            "wall_seconds": time.monotonic() - self.started,
        }
        summary.update(fields)
        ordered = {k: summary.get(k) for k in SUMMARY_KEYS}
        ordered.update({k: v for k, v in summary.items() if k not in ordered})
        write_metrics_csv(self.rows, self.run_dir / "metrics.csv")
        (self.run_dir / "summary.json").write_text(json.dumps(ordered, indent=2) + "\n")
        return ordered
