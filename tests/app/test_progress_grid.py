"""Progress inside a round: ``progress.json`` from the grid wrapper, and the bar's text."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from securefed.app.grid import InProcessGrid
from securefed.app.progress_grid import ProgressGrid, stage_of
from securefed.report.progress import describe, eta_seconds


def _read(path: Path) -> dict[str, Any]:
    return json.loads((path / "progress.json").read_text())


def _msgs(nodes: Iterable[int], server_round: int = 1, **secure: Any) -> list[Message]:
    content = RecordDict({"secure": ConfigRecord(secure)} if secure else {})
    return [Message(content=content, message_type="train", dst_node_id=n,
                    group_id=str(server_round)) for n in nodes]


def test_progress_json_follows_the_replies_of_the_in_process_grid(tmp_path) -> None:
    """Each client, as it trains, sees the replies of those before it out of the sent."""
    seen: list[tuple[int, int, int, str]] = []
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        p = _read(tmp_path)
        seen.append((p["round"], p["replies"], p["sent"], p["stage"]))
        return Message(RecordDict({"m": MetricRecord({"x": 1.0})}), reply_to=msg)

    inner = InProcessGrid(app, 4, {})
    grid = ProgressGrid(inner, tmp_path)
    nodes = list(grid.get_node_ids())[:3]
    replies = list(grid.send_and_receive(_msgs(nodes, 2), timeout=0.0))
    assert [int(r.metadata.src_node_id) for r in replies] == nodes  # order kept
    assert seen == [(2, 0, 3, "train"), (2, 1, 3, "train"), (2, 2, 3, "train")]
    final = _read(tmp_path)
    assert (final["replies"], final["sent"], final["message_type"]) == (3, 3, "train")
    assert final["round_started"] <= final["stage_started"] <= final["updated"]


def test_a_dropped_node_is_missing_from_the_count_not_waited_for(tmp_path) -> None:
    app = ClientApp()
    app.train()(lambda msg, ctx: Message(RecordDict(), reply_to=msg))
    inner = InProcessGrid(app, 3, {}, drop=lambda m: m.metadata.dst_node_id == 1001,
                          node_ids=[1000, 1001, 1002])
    replies = list(ProgressGrid(inner, tmp_path).send_and_receive(_msgs([1000, 1001, 1002])))
    assert len(replies) == 2
    assert (_read(tmp_path)["replies"], _read(tmp_path)["sent"]) == (2, 3)


def test_the_secure_stage_is_reported() -> None:
    (msg,) = _msgs([1], protocol="secagg+", stage="share-keys")
    assert stage_of(msg) == "secagg+ share-keys"
    (msg,) = _msgs([1], protocol="ckks", stage="decrypt")
    assert stage_of(msg) == "ckks decrypt"
    assert stage_of(_msgs([1])[0]) == "train"


class _SlowGrid(Grid):
    """A grid that answers later, like a SuperLink: one reply per pull, ``silent`` never."""

    def __init__(self, silent: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.silent = silent
        self.queue: list[Message] = []
        self.pulls = 0

    def set_run(self, run):  # pragma: no cover - unused
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, *a, **k):  # pragma: no cover - unused
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{i}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            if msg.metadata.dst_node_id not in self.silent:
                reply = Message(RecordDict(), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                self.queue.append(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        return [self.queue.pop(0)] if self.queue else []

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - bypassed
        raise AssertionError("the wrapper pushes and pulls itself")


def test_polling_waits_for_every_reply_without_a_timeout(tmp_path) -> None:
    inner = _SlowGrid()
    grid = ProgressGrid(inner, tmp_path, poll_interval=0.01)
    replies = list(grid.send_and_receive(_msgs([1, 2, 3], protocol="ckks", stage="setup"),
                                         timeout=None))
    assert len(replies) == 3 and inner.pulls == 3
    assert (_read(tmp_path)["replies"], _read(tmp_path)["stage"]) == (3, "ckks setup")


def test_polling_keeps_flowers_timeout(tmp_path) -> None:
    inner = _SlowGrid(silent={2})
    grid = ProgressGrid(inner, tmp_path, poll_interval=0.01)
    t0 = time.monotonic()
    replies = list(grid.send_and_receive(_msgs([1, 2, 3]), timeout=0.3))
    assert 0.3 <= time.monotonic() - t0 < 2.0
    assert sorted(int(r.metadata.src_node_id) for r in replies) == [1, 3]
    assert (_read(tmp_path)["replies"], _read(tmp_path)["sent"]) == (2, 3)
    # timeout 0 pulls nothing, exactly as Flower's grids do
    assert list(ProgressGrid(_SlowGrid(), tmp_path).send_and_receive(_msgs([1]),
                                                                    timeout=0.0)) == []


def test_no_messages_no_pull(tmp_path) -> None:
    inner = _SlowGrid()
    assert list(ProgressGrid(inner, tmp_path).send_and_receive([], timeout=None)) == []
    assert inner.pulls == 0 and not (tmp_path / "progress.json").exists()


ROWS = [{"round": 0, "accuracy": 0.2, "wall_seconds": 5.0},
        {"round": 1, "accuracy": 0.6, "wall_seconds": 65.0, "bytes_up_per_client": 2048},
        {"round": 2, "accuracy": 0.8, "wall_seconds": 125.0, "bytes_up_per_client": 2048,
         "rejected_replies": 1}]


def test_the_bar_shows_stage_replies_last_accuracy_and_eta() -> None:
    progress = {"round": 3, "stage": "secagg+ masked-input", "replies": 2, "sent": 4,
                "round_started": 1000.0}
    text = describe(ROWS, 5, progress, now=1020.0)
    assert text.startswith("round 3 · secagg+ masked-input 2/4 clients · last acc 0.800")
    assert "1 rejected" in text
    # 60 s a round, 3 rounds left, 20 s into this one
    assert eta_seconds(ROWS, 5, progress, now=1020.0) == 160.0
    assert text.endswith("ETA 2:40")


def test_the_bar_before_and_after_the_rounds() -> None:
    assert describe([], 3, None) == "starting"
    assert describe(ROWS[:1], 3, None) == "evaluating the initial adapter"
    assert eta_seconds(ROWS[:1], 3, None, now=0.0) is None
    done = describe(ROWS, 2, {"round": 2, "stage": "train", "replies": 2, "sent": 2})
    assert "ETA" not in done and not done.startswith("round")
    assert done == "last acc 0.800 · up 2.0 KiB/client · [red]1 rejected[/red]"
