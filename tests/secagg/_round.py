"""Honest SecAgg+ rounds for tests: stop mid-stage, poke, then complete.

:class:`Round` builds a small round step by step; :class:`Transcript` records one
round once so that the fuzz tests can copy any stage's state per generated message
and replay the rest cheaply; the fuzz helpers (settings, junk values, the typed-error
check) live at the bottom.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings

from securefed.exceptions import PayloadError
from securefed.roster import Identity, Roster
from securefed.secagg import (
    ADVERTISE_KEYS,
    DONE,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    AggregateResult,
    SecAggClient,
    SecAggError,
    SecAggServer,
    make_config,
    quantize,
    sum_mod,
)
from securefed.secagg.auth import Authenticator
from securefed.secagg.messages import CONSISTENCY

STEPS = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK)
"""The stages of the semi-honest protocol."""
MALICIOUS_STEPS = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK)
"""The stages of the malicious-server protocol (with the consistency round)."""
MODES = ("semi-honest", "malicious")
GRAPH_SEED = bytes(range(32))
RUN = "run-test"


@functools.cache
def identities(count: int) -> tuple[dict[str, Identity], Roster]:
    """``count`` fresh identities ``member-1..`` and their roster (cached per session)."""
    ids = {f"member-{i}": Identity(f"member-{i}", Ed25519PrivateKey.generate())
           for i in range(1, count + 1)}
    return ids, Roster({name: i.public_bytes for name, i in ids.items()})


def authenticators(ids: list[int], run: str = RUN, members: int = 12
                   ) -> dict[int, Authenticator]:
    """Client ``i`` signs as roster member ``member-i``; the roster has ``members``."""
    people, roster = identities(members)
    return {i: Authenticator(people[f"member-{i}"], roster, run) for i in ids}


def steps_of(malicious: bool) -> tuple[str, ...]:
    """The stages a client walks in this mode."""
    return MALICIOUS_STEPS if malicious else STEPS


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
        malicious: bool = False,
        round_id: int = 0,
        run: str = RUN,
    ) -> None:
        self.cfg = make_config(n, length, 1.0, bits, degree=degree, threshold=threshold,
                               round_id=round_id)
        self.ids = list(range(1, n + 1))
        self.malicious = malicious
        self.steps = steps_of(malicious)
        self.auths = authenticators(self.ids, run) if malicious else {}
        self.x = {i: np.linspace(-1.0, 1.0, length) * (i / n) for i in self.ids}
        self.server = SecAggServer(self.cfg, self.ids, graph_seed=GRAPH_SEED,
                                   malicious=malicious)
        self.clients = {i: SecAggClient(i, self.cfg, np.random.default_rng(i),
                                        auth=self.auths.get(i)) for i in self.ids}
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
        if stage == CONSISTENCY:
            return {i: c[i].consistency(prev[i]) for i in sorted(prev)}
        return {i: c[i].unmask(prev[i]) for i in sorted(prev)}

    def _close(self, stage: str) -> Any:
        return close_stage(self.server, stage)

    def run_until(self, target: str) -> None:
        prev = None
        for index, stage in enumerate(self.steps):
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
        prev = self._close(self.steps[self.stage_index])
        for stage in self.steps[self.stage_index + 1 :]:
            for msg in self._messages(stage, prev).values():
                self.server.receive(msg)
            prev = self._close(stage)
        return prev

    def expected_total(self) -> np.ndarray:
        qcfg = self.cfg.quantization
        vecs = [quantize(self.x[i], qcfg, np.random.default_rng(i))[0] for i in self.ids]
        return sum_mod(vecs, self.cfg.bits)


# ---------------------------------------------------------------------------
# A recorded round to fuzz from: build once, copy per example, replay the rest.
# ---------------------------------------------------------------------------

VICTIM = 2
"""The client whose messages the fuzz tests forge or whose inbox they poison."""


def client_step(client: SecAggClient, stage: str, reply: Any, x: np.ndarray) -> Any:
    """Have ``client`` produce its message of ``stage`` from the server's ``reply``."""
    if stage == ADVERTISE_KEYS:
        return client.advertise_keys()
    if stage == SHARE_KEYS:
        return client.share_keys(reply)
    if stage == MASKED_INPUT:
        return client.masked_input(reply, x)
    if stage == CONSISTENCY:
        return client.consistency(reply)
    return client.unmask(reply)


def close_stage(server: SecAggServer, stage: str) -> Any:
    """Close ``stage`` on ``server``: its replies, or the AggregateResult after UNMASK."""
    closers = {
        ADVERTISE_KEYS: server.broadcast_keys,
        SHARE_KEYS: server.route_shares,
        MASKED_INPUT: server.request_consistency if server.malicious else server.request_unmask,
        CONSISTENCY: server.request_unmask,
        UNMASK: server.finish,
    }
    return closers[stage]()


class Transcript:
    """One honest round (6 clients, ``k = 4``, ``t = 3``) recorded once.

    The graph gives client :data:`VICTIM` = 2 the neighbours 3..6 and the in-round
    non-neighbour 1. ``drop_stage`` makes client :attr:`dropout` (a neighbour of 2)
    withhold its message of that stage and everything after; the withheld message is
    kept in :attr:`withheld` to replay late.

    For every stage ``S``: :attr:`messages` ``[S]`` are the client messages the server
    received, :attr:`replies` ``[S]`` what it sent back on closing ``S``,
    :attr:`server_at` ``[S]`` the server collecting ``S`` with only client 1's message
    in, and :attr:`clients_at` ``[S]`` the active clients just before their ``S`` step
    (``clients_at[DONE]``: after the round). Fuzz tests deep-copy a snapshot, poke it,
    then :meth:`finish` the round: replayed messages for every client except the
    ``live`` ones, which compute theirs from the server's actual replies.
    """

    def __init__(self, drop_stage: str | None = None) -> None:
        n, length = 6, 8
        self.cfg = make_config(n, length, 1.0, 24, degree=4, threshold=3)
        self.ids = list(range(1, n + 1))
        self.x = {i: np.linspace(-1.0, 1.0, length) * (i / n) for i in self.ids}
        server = SecAggServer(self.cfg, self.ids, graph_seed=GRAPH_SEED)
        self.graph = server.graph
        assert 1 not in self.graph[VICTIM]
        self.dropout = max(self.graph[VICTIM])
        self.drop_stage = drop_stage
        clients = {i: SecAggClient(i, self.cfg, np.random.default_rng(i)) for i in self.ids}
        self.messages: dict[str, dict[int, Any]] = {}
        self.withheld: dict[str, Any] = {}
        self.replies: dict[str, Any] = {}
        self.server_at: dict[str, SecAggServer] = {}
        self.clients_at: dict[str, dict[int, SecAggClient]] = {}
        active, replies = set(self.ids), None
        for stage in STEPS:
            self.clients_at[stage] = copy.deepcopy({i: clients[i] for i in sorted(active)})
            sent = {}
            for i in sorted(active):
                reply = None if replies is None else replies[i]
                sent[i] = client_step(clients[i], stage, reply, self.x[i])
            if stage == drop_stage:
                self.withheld[stage] = sent.pop(self.dropout)
                active.discard(self.dropout)
            self.messages[stage] = sent
            server.receive(sent[1])
            self.server_at[stage] = copy.deepcopy(server)
            for i in sorted(sent)[1:]:
                server.receive(sent[i])
            replies = self.replies[stage] = close_stage(server, stage)
        self.clients_at[DONE] = copy.deepcopy(clients)
        self.survivors = tuple(sorted(self.messages[MASKED_INPUT]))
        qcfg = self.cfg.quantization
        vecs = [quantize(self.x[i], qcfg, np.random.default_rng(i))[0] for i in self.survivors]
        self.expected = sum_mod(vecs, self.cfg.bits)
        self.check(replies)

    def reply_to(self, stage: str, client: int = VICTIM) -> Any:
        """The honest server message a client acts on in ``stage`` (None to advertise)."""
        index = STEPS.index(stage)
        return None if index == 0 else self.replies[STEPS[index - 1]][client]

    def server(self, stage: str) -> SecAggServer:
        """A fresh copy of the server collecting ``stage`` (client 1's message in)."""
        return copy.deepcopy(self.server_at[stage])

    def finish(
        self, server: SecAggServer, stage: str, live: dict[int, SecAggClient] | None = None
    ) -> AggregateResult:
        """Run ``server`` (a copy of ``server_at[stage]``) to the end of the round."""
        live = live or {}
        replies = self.replies[STEPS[STEPS.index(stage) - 1]] if stage != ADVERTISE_KEYS else {}
        for st in STEPS[STEPS.index(stage) :]:
            for i, recorded in sorted(self.messages[st].items()):
                if st == stage and i == 1:
                    continue  # already in the snapshot
                client = live.get(i)
                if client is not None and client.stage == st:
                    server.receive(client_step(client, st, replies.get(i), self.x[i]))
                else:
                    server.receive(recorded)
            replies = close_stage(server, st)
        return replies  # type: ignore[no-any-return]

    def finish_with_victim(self, victim: SecAggClient, stage: str) -> AggregateResult:
        """Finish the round with ``victim`` (client 2, sitting at ``stage``) live.

        Fresh keys (``ADVERTISE_KEYS``) or fresh shares (``SHARE_KEYS``) change what
        the other clients must send from the next stage on, so they go live too.
        """
        if stage == DONE:
            return self.finish(self.server(UNMASK), UNMASK)
        live = {VICTIM: victim}
        if stage in (ADVERTISE_KEYS, SHARE_KEYS):
            after = STEPS[STEPS.index(stage) + 1]
            others = copy.deepcopy(self.clients_at[after])
            live.update({i: c for i, c in others.items() if i != VICTIM})
        return self.finish(self.server(stage), stage, live)

    def check(self, result: AggregateResult) -> None:
        """The exact aggregate: the plaintext sum mod ``2**bits`` over the survivors."""
        assert np.array_equal(result.total, self.expected), "wrong aggregate"
        assert result.survivors == self.survivors


@functools.cache
def transcript(drop_stage: str | None = None) -> Transcript:
    """The recorded round of this test session (one per ``drop_stage``)."""
    return Transcript(drop_stage)


# ---------------------------------------------------------------------------
# Fuzz helpers
# ---------------------------------------------------------------------------

FUZZ_TOTAL_MIN = 10_000
"""Generated adversarial messages per pytest run, at least (the issue's requirement)."""

TYPED_ERRORS = (SecAggError, PayloadError)
"""What a rejected message may raise: never a bare TypeError, ValueError, KeyError..."""


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible (derandomised, no database) settings for the adversarial fuzz tests."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )


def expect_rejected(action: Callable[[], object], message: object) -> Exception:
    """Run ``action``; it must raise one of :data:`TYPED_ERRORS`, which is returned."""
    try:
        action()
    except TYPED_ERRORS as exc:
        return exc
    except Exception as exc:  # pragma: no cover - the failure names the message
        raise AssertionError(
            f"untyped {type(exc).__name__}: {exc} leaked for the message {message!r}"
        ) from exc
    raise AssertionError(f"accepted a malformed message: {message!r}")  # pragma: no cover


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque object>"


JUNK_SCALARS: tuple[Any, ...] = (
    None, 0, -1, 1.5, float("nan"), True, False, "", "2", b"", b"\x02", 2.0,
    np.int64(2), np.uint64(2), np.array(2), np.array([2, 2]), (2,), Ellipsis, _Opaque(),
)  # fmt: skip
"""Values that are no client id, bits or key: wrong types and numpy look-alikes."""

JUNK_CONTAINERS: tuple[Any, ...] = (
    None, 0, 1.5, "x", b"xx", np.int64(2), np.zeros(3), Ellipsis, _Opaque(),
    [3, 4], (3, 4), [(3, b"")], "3456",
)  # fmt: skip
"""Values that are no dict or set of the right kind (never a valid empty container)."""
