"""Fuzz: 10,000 hostile plaintext replies through AdapterFedAvg and the user-DP wrappers.

Each aggregate call gets one honest reply (in most batches) and a batch of hostile ones
(:mod:`tests.strategies.hostile`), from distinct nodes plus duplicated and unsampled
ones. Pass criteria (issue 10, finding 5):

* no error escapes but a typed one (PayloadError, AggregationError, PrivacyError);
* the global the round started from is bit-for-bit unchanged afterwards;
* every hostile node is recorded as rejected, with a reason;
* with the honest reply in, the result is bit-for-bit the result of the same round
  with the honest reply alone (same seeds: the same sample and the same DP noise);
  without it, the round is refused (AggregationError), nothing released.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import Strategy

from securefed.app.grid import InProcessGrid
from securefed.app.identify import register_identify
from securefed.exceptions import AggregationError, PayloadError, PrivacyError
from securefed.privacy.accountants import create_accountant
from securefed.privacy.noise import make_source
from strategies.adapter_fedavg import AdapterFedAvg
from strategies.records import payload_to_record
from strategies.user_dp import USER_DP_WRAPPERS, UserDPSettings
from tests.strategies.hostile import (
    GLOBAL,
    IN_PROCESS_ONLY,
    MAX_WEIGHT,
    honest_content,
    hostile_content,
    reply_to,
    with_id,
)

TYPED = (PayloadError, AggregationError, PrivacyError)
NODES = 64  # sampled each round: one honest node, the others hostile
# 8 nodes never sampled: "unsampled" replies
GRID = InProcessGrid(register_identify(ClientApp()), NODES + 8, {})


def _build(kind: str, *, strict: bool = False, seed: int = 0) -> tuple[Strategy, AdapterFedAvg]:
    adapter = AdapterFedAvg(clients_per_round=NODES, min_replies=1, max_weight=MAX_WEIGHT,
                            uniform_weights=kind != "plain", rng=np.random.default_rng(seed))
    if kind == "plain":
        return adapter, adapter
    settings = UserDPSettings(adapter=adapter, accountant=create_accountant("rdp"),
                              sample_rate=1.0, delta=1e-5, budget=1e12, strict=strict,
                              source=make_source("seeded", seed + 1))
    extra: dict[str, Any] = {}
    if "adaptive" in kind:
        extra = {"clipped_count_stddev": 8.0}
    wrapper = USER_DP_WRAPPERS.get(kind)(adapter, settings, noise_multiplier=0.5,
                                         clipping_norm=1.0, expected_clients=NODES, **extra)
    return wrapper, adapter


def _start(kind: str, seed: int, **kw: Any) -> tuple[Strategy, AdapterFedAvg, ArrayRecord,
                                                       list[Message]]:
    strategy, adapter = _build(kind, seed=seed, **kw)
    arrays = payload_to_record(GLOBAL)
    instructions = [with_id(m) for m in
                    strategy.configure_train(1, arrays, ConfigRecord(), GRID)]
    return strategy, adapter, arrays, instructions


def _bits(record: ArrayRecord) -> dict[str, bytes]:
    return {k: a.numpy().tobytes() for k, a in record.items()}


def _honest(kind: str, rng: np.random.Generator) -> dict[str, object]:
    extra = {"norm_bit": int(rng.integers(2))} if kind == "client-adaptive" else None
    return honest_content(rng, extra_metrics=extra)


def _batch(kind: str, seed: int, size: int, with_honest: bool, counts: Counter[str],
           **kw: Any) -> int:
    """One aggregate call; returns the number of hostile replies it carried."""
    rng = np.random.default_rng(seed)
    strategy, adapter, arrays, instructions = _start(kind, seed, **kw)
    before = _bits(arrays)
    honest = _honest(kind, rng)
    replies, hostile_nodes, names = [], set(), {}
    for instruction in instructions[1:size + 1]:
        name, content = hostile_content(rng)
        counts[name] += 1
        names[int(instruction.metadata.dst_node_id)] = name
        wire = not IN_PROCESS_ONLY & set(name.split("+"))
        replies.append(reply_to(instruction, content, wire=wire))
        hostile_nodes.add(int(instruction.metadata.dst_node_id))
        if rng.random() < 0.05:  # the same node twice: a valid reply beside its first one
            replies.append(reply_to(instruction, _honest(kind, rng)))
            counts["duplicate-node"] += 1
    sampled = {int(m.metadata.dst_node_id) for m in instructions}
    outsiders = [n for n in GRID.get_node_ids() if n not in sampled]
    for _ in range(int(rng.integers(0, 3))):  # a node that was not sampled answers
        node = outsiders[int(rng.integers(len(outsiders)))]
        fake = with_id(Message(instructions[0].content, dst_node_id=node,
                               message_type="train", group_id="1"))
        replies.append(reply_to(fake, _honest(kind, rng)))
        hostile_nodes.add(int(fake.metadata.dst_node_id))
        counts["unsampled-node"] += 1
    if rng.random() < 0.1:
        replies.append(reply_to(instructions[-1], None, error=True))
        hostile_nodes.add(int(instructions[-1].metadata.dst_node_id))
        counts["error-reply"] += 1
    honest_node = int(instructions[0].metadata.dst_node_id)
    if with_honest:
        replies.insert(int(rng.integers(len(replies) + 1)), reply_to(instructions[0], honest))
    order = rng.permutation(len(replies))
    result: ArrayRecord | None = None
    try:
        result, _ = strategy.aggregate_train(1, [replies[i] for i in order])
    except TYPED as exc:
        refused: Exception | None = exc
    else:
        refused = None
    assert _bits(arrays) == before, "a reply changed the global in place"
    stats = adapter.history[-1] if adapter.history else adapter.current_stats
    assert stats is not None
    slipped = hostile_nodes & set(stats.accepted)
    assert not slipped, {n: names.get(n) for n in slipped}
    for node in hostile_nodes:
        if node in stats.rejected or kw.get("strict"):
            continue
        raise AssertionError(f"hostile node {node} is not recorded as rejected")
    assert all(isinstance(r, str) and r for r in stats.rejected.values())
    if not with_honest or kw.get("strict"):
        assert result is None and refused is not None  # nothing is released
        if not kw.get("strict"):
            assert isinstance(refused, AggregationError)
        if kind != "plain":  # no noisy release, no privacy spent
            assert strategy.released == 0  # type: ignore[attr-defined]
            assert strategy.dp.accountant.num_steps == 0  # type: ignore[attr-defined]
        return size
    assert refused is None, refused
    assert stats.accepted == [honest_node]
    ref, _, _, ref_instructions = _start(kind, seed, **kw)
    expected, _ = ref.aggregate_train(1, [reply_to(ref_instructions[0], honest)])
    assert result is not None and expected is not None
    assert _bits(result) == _bits(expected)
    if "adaptive" in kind:
        assert strategy.clipping_norm == ref.clipping_norm  # type: ignore[attr-defined]
    return size


@pytest.mark.parametrize(("kind", "replies"), [
    ("plain", 10_000),
    ("server-fixed", 4_000),
    ("server-adaptive", 2_000),
    ("client-fixed", 2_000),
    ("client-adaptive", 2_000),
])
def test_hostile_replies_are_rejected_and_leave_the_global_alone(kind: str,
                                                                 replies: int) -> None:
    counts: Counter[str] = Counter()
    done, seed = 0, 0
    while done < replies:
        size = min(NODES - 1, replies - done)
        done += _batch(kind, seed, size, with_honest=seed % 10 != 9, counts=counts)
        seed += 1
    assert done == replies
    assert len(counts) >= 40, counts  # every kind of mutation was drawn


def test_strict_user_dp_refuses_the_round_and_releases_nothing() -> None:
    counts: Counter[str] = Counter()
    for seed in range(20):
        _batch("server-fixed", 1000 + seed, NODES - 1, with_honest=True, counts=counts,
               strict=True)
