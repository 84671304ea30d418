"""Every stage transition of the SecAgg+ client and server, legal and illegal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from securefed.exceptions import ConfigError, PayloadError
from securefed.secagg import (
    ADVERTISE_KEYS,
    CONSISTENCY,
    DONE,
    MASKED_INPUT,
    SEMI_HONEST_STAGES,
    SHARE_KEYS,
    STAGES,
    UNMASK,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    DecryptionError,
    KeysBroadcast,
    MaskedInput,
    ProtocolError,
    SecAggClient,
    SecAggServer,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    make_config,
)
from tests.secagg._round import MALICIOUS_STEPS, MODES, STEPS, Round, client_step, steps_of

CLIENT_CALLS = {
    ADVERTISE_KEYS: lambda c: c.advertise_keys(),
    SHARE_KEYS: lambda c: c.share_keys(KeysBroadcast(c.client_id, {})),
    MASKED_INPUT: lambda c: c.masked_input(ShareBundle(c.client_id, {}), np.zeros(8)),
    CONSISTENCY: lambda c: c.consistency(ConsistencyRequest(c.client_id, frozenset())),
    UNMASK: lambda c: c.unmask(UnmaskRequest(c.client_id, frozenset(), frozenset())),
}
CLOSERS = ("broadcast_keys", "route_shares", "request_consistency", "request_unmask", "finish")


def _closer(stage: str, malicious: bool) -> str | None:
    """The one legal closing call of ``stage`` in this mode (None after DONE)."""
    legal = {ADVERTISE_KEYS: "broadcast_keys", SHARE_KEYS: "route_shares",
             MASKED_INPUT: "request_consistency" if malicious else "request_unmask",
             CONSISTENCY: "request_unmask", UNMASK: "finish"}
    return legal.get(stage)


SAMPLE_MESSAGES = {
    ADVERTISE_KEYS: AdvertiseKeys(1, bytes(32), bytes(range(32))),
    SHARE_KEYS: ShareKeys(1, {}),
    MASKED_INPUT: MaskedInput(1, np.zeros(8, dtype=np.uint64), 24),
    CONSISTENCY: ConsistencySignature(1, bytes(64)),
    UNMASK: UnmaskResponse(1, {}, {}),
}
MODE_STAGES = [(mode, stage) for mode in MODES
               for stage in (*steps_of(mode == "malicious"), DONE)]
"""(mode, stage) for every stage a client or server of that mode can sit in."""


def test_stage_order():
    assert STAGES == (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK, DONE)
    assert (*STEPS, DONE) == SEMI_HONEST_STAGES
    assert STAGES[:5] == MALICIOUS_STEPS


def _client_at(stage: str, malicious: bool) -> SecAggClient:
    """Client 2 of a round, sitting at ``stage``."""
    r = Round(malicious=malicious)
    if stage == ADVERTISE_KEYS:
        return r.clients[2]
    steps = (*r.steps, DONE)
    previous = steps[steps.index(stage) - 1]
    r.run_until(previous)  # every client has now sent its ``previous`` message
    client = r.clients[2]
    assert client.stage == stage
    return client


@pytest.mark.parametrize(("mode", "stage"), MODE_STAGES)
def test_client_illegal_transitions(mode, stage):
    client = _client_at(stage, mode == "malicious")
    for call_stage, call in CLIENT_CALLS.items():
        if call_stage == stage:
            continue
        with pytest.raises(ProtocolError) as info:
            call(client)
        assert repr(stage) in str(info.value) and repr(call_stage) in str(info.value)
        assert client.stage == stage


@pytest.mark.parametrize("mode", MODES)
def test_legal_transitions_walk_every_stage(mode):
    r = Round(malicious=mode == "malicious")
    c, s = r.clients, r.server
    seen = [(c[1].stage, s.stage)]
    replies: dict[int, object] = {}
    for stage in r.steps:
        for i in r.ids:
            s.receive(client_step(c[i], stage, replies.get(i), r.x[i]))
        seen.append((c[1].stage, s.stage))
        replies = getattr(s, _closer(stage, r.malicious))()
    result = replies
    assert [client for client, _ in seen] == [*r.steps, DONE]
    assert [server for _, server in seen] == [r.steps[0], *r.steps]
    assert s.stage == DONE
    assert np.array_equal(result.total, r.expected_total())


def _server_at(stage: str, malicious: bool = False) -> tuple[Round, SecAggServer]:
    r = Round(malicious=malicious)
    if stage == DONE:
        r.run_until(UNMASK)
        r.complete()
    else:
        r.run_until(stage)
    assert r.server.stage == stage
    return r, r.server


@pytest.mark.parametrize(("mode", "stage"), MODE_STAGES)
def test_server_illegal_transitions(mode, stage):
    malicious = mode == "malicious"
    _, server = _server_at(stage, malicious)
    for closer in CLOSERS:
        if closer == _closer(stage, malicious):
            continue
        with pytest.raises(ProtocolError) as info:
            getattr(server, closer)()
        if closer == "request_consistency" and not malicious:
            assert "malicious mode" in str(info.value)
        else:
            assert repr(stage) in str(info.value)
    for other, msg in SAMPLE_MESSAGES.items():
        if other == stage:
            continue
        with pytest.raises(ProtocolError, match="only legal in stage"):
            server.receive(msg)
    assert server.stage == stage


@pytest.mark.parametrize(("mode", "stage"), [(m, s) for m, s in MODE_STAGES if s != DONE])
def test_server_legal_transition_then_exact_result(mode, stage):
    r, server = _server_at(stage, mode == "malicious")
    result = r.complete()
    assert server.stage == DONE
    assert np.array_equal(result.total, r.expected_total())
    assert result.survivors == (1, 2, 3, 4)
    assert server.survivors[UNMASK] == (1, 2, 3, 4)


def test_server_rejects_non_messages_and_bad_construction():
    _, server = _server_at(ADVERTISE_KEYS)
    for junk in (None, "advertise_keys", {"sender": 1}, KeysBroadcast(1, {})):
        with pytest.raises(ProtocolError, match="not a SecAgg"):
            server.receive(junk)
    cfg = make_config(4, 8, 1.0, 24)
    with pytest.raises(ConfigError):
        SecAggServer(cfg, [1, 2, 3])
    with pytest.raises(ConfigError):
        SecAggServer(cfg, [1, 2, 3, 3])
    with pytest.raises(ConfigError):
        SecAggClient(0, cfg, np.random.default_rng())
    with pytest.raises(ConfigError):
        SecAggClient(1, cfg, np.random.RandomState(0))  # type: ignore[arg-type]


# --- the consistency rule and client-side checks -----------------------------------


def _unmask_ready() -> tuple[Round, SecAggClient, UnmaskRequest]:
    r = Round()
    r.run_until(MASKED_INPUT)
    for msg in r.pending:
        r.server.receive(msg)
    requests = r.server.request_unmask()
    return r, r.clients[1], requests[1]


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        ({2, 3}, {3}, "consistency rule"),
        ({2, 3, 4}, {2}, "consistency rule"),
        ({2, 9}, set(), "not neighbours"),
        ({1, 2}, set(), "not neighbours"),  # itself
        (set(), {7}, "not neighbours"),
    ],
)
def test_client_refuses_inconsistent_unmask_requests(survivors, dropped, match):
    _, client, honest = _unmask_ready()
    bad = UnmaskRequest(1, frozenset(survivors), frozenset(dropped))
    with pytest.raises(ProtocolError, match=match):
        client.unmask(bad)
    assert client.stage == UNMASK
    response = client.unmask(honest)  # the honest request still works, once
    assert set(response.b_shares) == {2, 3, 4} and response.s_shares == {}
    with pytest.raises(ProtocolError, match="'done'"):
        client.unmask(honest)


def test_client_rejects_request_for_someone_else():
    _, client, honest = _unmask_ready()
    with pytest.raises(ProtocolError, match="for client 1"):
        client.unmask(dataclasses.replace(honest, receiver=2))


def _bundles_ready() -> tuple[Round, SecAggClient, ShareBundle]:
    r = Round()
    r.run_until(SHARE_KEYS)
    for msg in r.pending:
        r.server.receive(msg)
    bundles = r.server.route_shares()
    return r, r.clients[1], bundles[1]


def test_client_detects_tampered_or_misrouted_bundles():
    _, client, bundle = _bundles_ready()
    x = np.zeros(8)
    ct = bundle.ciphertexts[2]
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    for bad in (
        ShareBundle(1, {**bundle.ciphertexts, 2: tampered}),
        ShareBundle(1, {**bundle.ciphertexts, 2: bundle.ciphertexts[3]}),  # swapped sender
        ShareBundle(1, {**bundle.ciphertexts, 2: ct[:20]}),
    ):
        with pytest.raises(DecryptionError):
            client.masked_input(bad, x)
    with pytest.raises(ProtocolError, match="not a neighbour"):
        client.masked_input(ShareBundle(1, {**bundle.ciphertexts, 9: ct}), x)
    with pytest.raises(ProtocolError, match="for client 1"):
        client.masked_input(ShareBundle(2, bundle.ciphertexts), x)
    with pytest.raises(PayloadError, match="length"):
        client.masked_input(bundle, np.zeros(7))
    with pytest.raises(PayloadError, match="weight"):
        client.masked_input(bundle, x, weight=3)
    assert client.stage == MASKED_INPUT
    client.masked_input(bundle, x)
    assert client.stage == UNMASK


def test_client_rejects_bad_key_broadcasts():
    r = Round()
    r.run_until(ADVERTISE_KEYS)
    for msg in r.pending:
        r.server.receive(msg)
    honest = r.server.broadcast_keys()[1]
    client = r.clients[1]
    keys = dict(honest.neighbours)
    own = r.honest[ADVERTISE_KEYS][1]
    for bad, match in (
        (KeysBroadcast(2, keys), "for client 1"),
        (KeysBroadcast(1, {**keys, 1: (bytes(32), bytes(32))}), "own neighbour"),
        (KeysBroadcast(1, {2: keys[2]}), "cannot hold"),
        (KeysBroadcast(1, {**keys, 2: (keys[2][0], b"short")}), "malformed"),
        (KeysBroadcast(1, {**keys, 2: (own.c_public, keys[2][1])}), "repeated"),
        (KeysBroadcast(1, {**keys, 2: (keys[3][0], keys[2][1])}), "repeated"),
    ):
        with pytest.raises(ProtocolError, match=match):
            client.share_keys(bad)
        assert client.stage == SHARE_KEYS
    assert set(client.share_keys(honest).ciphertexts) == {2, 3, 4}
