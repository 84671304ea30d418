"""A step-by-step honest SecAgg+ round for tests: stop mid-stage, poke, then complete."""

from __future__ import annotations

from typing import Any

import numpy as np

from securefed.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    AggregateResult,
    SecAggClient,
    SecAggServer,
    make_config,
    quantize,
    sum_mod,
)

STEPS = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK)
GRAPH_SEED = bytes(range(32))


class Round:
    """Honest clients 1..n and a server, driven stage by stage.

    ``run_until(stage)`` makes every client produce its message of ``stage`` and
    delivers only the first one, so the server is left collecting ``stage``;
    ``complete()`` delivers the rest and runs the round to the end.
    """

    def __init__(
        self,
        n: int = 4,
        length: int = 8,
        bits: int = 24,
        degree: int | None = None,
        threshold: int | None = None,
    ) -> None:
        self.cfg = make_config(n, length, 1.0, bits, degree=degree, threshold=threshold)
        self.ids = list(range(1, n + 1))
        self.x = {i: np.linspace(-1.0, 1.0, length) * (i / n) for i in self.ids}
        self.server = SecAggServer(self.cfg, self.ids, graph_seed=GRAPH_SEED)
        self.clients = {i: SecAggClient(i, self.cfg, np.random.default_rng(i)) for i in self.ids}
        self.honest: dict[str, dict[int, Any]] = {}
        self.replies: dict[str, dict[int, Any]] = {}
        self.pending: list[Any] = []
        self.stage_index = -1

    def _messages(self, stage: str, prev: dict[int, Any] | None) -> dict[int, Any]:
        c = self.clients
        if stage == ADVERTISE_KEYS:
            return {i: c[i].advertise_keys() for i in self.ids}
        assert prev is not None
        if stage == SHARE_KEYS:
            return {i: c[i].share_keys(prev[i]) for i in sorted(prev)}
        if stage == MASKED_INPUT:
            return {i: c[i].masked_input(prev[i], self.x[i]) for i in sorted(prev)}
        return {i: c[i].unmask(prev[i]) for i in sorted(prev)}

    def _close(self, stage: str) -> Any:
        s = self.server
        closers = {
            ADVERTISE_KEYS: s.broadcast_keys,
            SHARE_KEYS: s.route_shares,
            MASKED_INPUT: s.request_unmask,
            UNMASK: s.finish,
        }
        return closers[stage]()

    def run_until(self, target: str) -> None:
        prev = None
        for index, stage in enumerate(STEPS):
            msgs = self._messages(stage, prev)
            self.honest[stage] = msgs
            ids = sorted(msgs)
            if stage == target:
                self.server.receive(msgs[ids[0]])
                self.pending = [msgs[i] for i in ids[1:]]
                self.stage_index = index
                return
            for i in ids:
                self.server.receive(msgs[i])
            prev = self._close(stage)
            self.replies[stage] = prev

    def complete(self) -> AggregateResult:
        for msg in self.pending:
            self.server.receive(msg)
        prev = self._close(STEPS[self.stage_index])
        for stage in STEPS[self.stage_index + 1 :]:
            for msg in self._messages(stage, prev).values():
                self.server.receive(msg)
            prev = self._close(stage)
        return prev

    def expected_total(self) -> np.ndarray:
        qcfg = self.cfg.quantization
        vecs = [quantize(self.x[i], qcfg, np.random.default_rng(i))[0] for i in self.ids]
        return sum_mod(vecs, self.cfg.bits)
