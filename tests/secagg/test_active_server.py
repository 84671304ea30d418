"""An adversarial server against SecAgg+: every deviation is refused and yields no secret.

The harness drives the pure state machines of a round of ``n = 6`` clients, ``k = 4``,
``t = 3`` (so ``T = 5`` consistency signatures). Client 2 is the target; its neighbours
are 3..6 and client 1 is not one. The server deviates at one stage in each of the ways
of issue 10 (findings 1 and 2): an empty or short share bundle, a short survivor set,
substituted public keys, a Sybil or non-member, inconsistent survivor sets to different
neighbours with ``2t - k`` colluding neighbours, a config below the node's floors, and
signatures replayed from another round or run. Each time the attacker gets a typed
refusal (ProtocolError / SignatureError / PrivacyError) and, checked explicitly, never
``t`` shares of both the target's self-mask seed and its key, nor an unmask response
from the refusing client.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefed.exceptions import AggregationError, PrivacyError, SignatureError
from securefed.roster import Identity
from securefed.secagg import (
    ADVERTISE_KEYS,
    CONSISTENCY,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    ConsistencyRequest,
    DecryptionError,
    FloorError,
    KeysBroadcast,
    ProtocolError,
    SecAggClient,
    SecAggFloors,
    ShareBundle,
    SumRangeError,
    UnmaskRequest,
    UnmaskResponse,
    consistency_threshold,
    generate_keypair,
    make_config,
)
from securefed.secagg.auth import members_digest
from tests.secagg._round import MODES, RUN, Round, authenticators, close_stage

TARGET = 2
COLLUDERS = (5, 6)  # 2t - k = 2 of the target's neighbours
T_SIGNATURES = consistency_threshold(6, 3)


def _round(malicious: bool = True, **kw: Any) -> Round:
    r = Round(n=6, length=8, bits=24, degree=4, threshold=3, malicious=malicious, **kw)
    assert r.server.graph[TARGET] == frozenset({3, 4, 5, 6})
    return r


def _step(r: Round, stage: str, replies: dict[int, Any], skip: int | None = None) -> Any:
    """Every client (but ``skip``) answers ``replies``; the server closes ``stage``."""
    for i in sorted(replies):
        if i != skip:
            r.server.receive(getattr(r.clients[i], stage)(replies[i]) if stage != MASKED_INPUT
                             else r.clients[i].masked_input(replies[i], r.x[i]))
    return close_stage(r.server, stage)


def _until(r: Round, stage: str) -> dict[int, Any]:
    """Run the round honestly; return the server's messages for ``stage``."""
    for i in r.ids:
        r.server.receive(r.clients[i].advertise_keys())
    replies = close_stage(r.server, ADVERTISE_KEYS)
    for current in r.steps[1:]:
        if current == stage:
            return dict(replies)
        replies = _step(r, current, replies)
    raise AssertionError(stage)


def _leak(responses: list[UnmaskResponse], colluders: tuple[int, ...], r: Round,
          target: int = TARGET) -> tuple[int, int]:
    """Shares of ``target``'s self-mask seed and key the attacker holds (with colluders')."""
    b = sum(target in resp.b_shares for resp in responses)
    s = sum(target in resp.s_shares for resp in responses)
    held = [r.clients[c]._held for c in colluders if target in r.clients[c]._held]
    return b + len(held), s + len(held)


def _no_secret(responses: list[UnmaskResponse], r: Round, colluders: tuple[int, ...] = ()
               ) -> None:
    b, s = _leak(responses, colluders, r)
    t = r.cfg.graph.threshold
    assert not (b >= t and s >= t), f"attacker holds {b} seed and {s} key shares (t = {t})"


# --- finding 1: masking or unmasking without t neighbours ------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kept", [0, 1, 2])
def test_short_share_bundle_is_refused_before_masking(mode, kept):
    """The reviewer's attack: an empty bundle gets an input masked by the self-mask only."""
    r = _round(mode == "malicious")
    bundles = _until(r, MASKED_INPUT)
    honest = bundles[TARGET]
    short = ShareBundle(TARGET, dict(list(honest.ciphertexts.items())[:kept]))
    victim = r.clients[TARGET]
    with pytest.raises(FloorError, match="t = 3") as info:
        victim.masked_input(short, r.x[TARGET])
    assert isinstance(info.value, PrivacyError) and isinstance(info.value, ProtocolError)
    assert victim.stage == MASKED_INPUT and victim.clip_report is None  # nothing masked
    victim.masked_input(honest, r.x[TARGET])  # the honest bundle still works


@pytest.mark.parametrize("mode", MODES)
def test_short_survivor_set_is_refused_before_unmasking(mode):
    malicious = mode == "malicious"
    r = _round(malicious)
    stage = CONSISTENCY if malicious else UNMASK
    msgs = _until(r, stage)
    victim = r.clients[3]
    if malicious:  # a U3 smaller than T cannot be signed off
        with pytest.raises(FloorError, match="T = 5"):
            victim.consistency(ConsistencyRequest(3, frozenset({2, 3, 4})))
        assert victim.stage == CONSISTENCY
        return
    honest = msgs[3]
    short = UnmaskRequest(3, frozenset({2}), honest.survivors - {2})
    with pytest.raises(FloorError, match="t = 3"):
        victim.unmask(short)
    assert victim.stage == UNMASK


# --- finding 2: an active server ------------------------------------------------------


def test_substituted_keys_are_refused():
    """Server-made keys for neighbour 3 (reusing 3's signature, or signing them itself)."""
    r = _round()
    broadcasts = _until(r, SHARE_KEYS)
    honest = broadcasts[TARGET]
    c, s = generate_keypair(), generate_keypair()
    fake = (c.public_bytes, s.public_bytes)
    own = Identity("member-3", Ed25519PrivateKey.generate())  # the server's own key
    own_sig = own.sign("securefed/secagg/advertise-keys", RUN, 0, 3, "member-3", b"", *fake)
    for signature in (honest.signatures[3], own_sig, b"", bytes(64)):
        forged = dataclasses.replace(honest, neighbours={**honest.neighbours, 3: fake},
                                     signatures={**honest.signatures, 3: signature})
        victim = copy.deepcopy(r.clients[TARGET])
        with pytest.raises(SignatureError):
            victim.share_keys(forged)
        assert victim.stage == SHARE_KEYS
    # without a signature at all
    unsigned = dataclasses.replace(honest, signatures={k: v for k, v in honest.signatures.items()
                                                       if k != 3})
    with pytest.raises(SignatureError):
        copy.deepcopy(r.clients[TARGET]).share_keys(unsigned)
    r.clients[TARGET].share_keys(honest)


@pytest.mark.parametrize("attack", ["duplicate-name", "sybil-id", "non-member", "too-many",
                                    "not-me", "renamed"])
def test_sybils_and_non_members_are_refused(attack):
    r = _round()
    honest = _until(r, SHARE_KEYS)[TARGET]
    members = dict(honest.members)
    nb, sigs = dict(honest.neighbours), dict(honest.signatures)
    expected: type[Exception] = ProtocolError
    if attack == "duplicate-name":  # member-3 presented twice, as clients 3 and 4
        members[4] = "member-3"
    elif attack == "sybil-id":  # member-3's real keys and signature again under id 7
        members[7], nb[7], sigs[7] = "member-3", nb[3], sigs[3]
    elif attack == "non-member":  # a name the node's roster does not list
        members[3] = "mallory"
        expected = SignatureError
    elif attack == "too-many":
        members.update({7: "member-7", 8: "member-8"})
    elif attack == "not-me":
        members[TARGET] = "member-9"
    else:  # client 3 presented as another real member (its signature names member-3)
        members[3] = "member-9"
        expected = SignatureError
    forged = KeysBroadcast(TARGET, nb, sigs, members)
    victim = r.clients[TARGET]
    with pytest.raises(expected):
        victim.share_keys(forged)
    assert victim.stage == SHARE_KEYS


def test_a_world_the_neighbours_were_not_shown_breaks_the_shares():
    """Two members maps (a split world): a neighbour shown another map than the target
    encrypts its shares under another context, and the target refuses them."""
    r = _round()
    broadcasts = _until(r, SHARE_KEYS)
    outsider = next(i for i in r.ids if i not in r.server.graph[3] | {3})
    other = dataclasses.replace(broadcasts[3], members={**broadcasts[3].members,
                                                         outsider: "member-10"})
    for i in r.ids:
        r.server.receive(r.clients[i].share_keys(broadcasts[i] if i != 3 else other))
    bundles = close_stage(r.server, SHARE_KEYS)
    with pytest.raises(DecryptionError):
        r.clients[TARGET].masked_input(bundles[TARGET], r.x[TARGET])


def test_inconsistent_survivor_sets_with_2t_minus_k_colluders_get_no_secret():
    """The split attack: tell neighbour 3 the target survived and neighbour 4 that it
    dropped; colluders 5 and 6 sign both sets and hand over their shares. With ``t``
    signatures as the rule both sets would pass; the threshold ``T`` stops it."""
    base = _round()
    _until(base, CONSISTENCY)
    u3 = frozenset(base.ids)
    u3_split = u3 - {TARGET}
    t = base.cfg.graph.threshold
    refusals = 0
    for told in itertools.product([u3, u3_split], repeat=2):  # what clients 1 and 2 are told
        r = copy.deepcopy(base)
        assign = {1: told[0], TARGET: told[1], 3: u3, 4: u3_split}
        signatures: dict[frozenset[int], dict[int, bytes]] = {u3: {}, u3_split: {}}
        for i, survivors in assign.items():
            if TARGET in survivors or i != TARGET:
                sig = r.clients[i].consistency(ConsistencyRequest(i, survivors))
                signatures[survivors][i] = sig.signature
        for colluder in COLLUDERS:  # colluders sign anything
            auth, client = r.auths[colluder], r.clients[colluder]
            session = members_digest(client._members)
            for survivors in (u3, u3_split):
                signatures[survivors][colluder] = auth.sign_survivors(
                    r.cfg, colluder, session, survivors)
        assert all(len(s) >= t for s in signatures.values()), "t signatures would pass"
        responses = []
        for i in (3, 4):
            held = set(r.clients[i]._held)
            survivors = assign[i]
            request = UnmaskRequest(i, frozenset(held & survivors), frozenset(held - survivors),
                                    signatures[survivors])
            if len(signatures[survivors]) >= T_SIGNATURES:
                responses.append(r.clients[i].unmask(request))
                continue
            with pytest.raises(SignatureError, match=f"T = {T_SIGNATURES}"):
                r.clients[i].unmask(request)
            refusals += 1
        _no_secret(responses, r, COLLUDERS)
    assert refusals >= 4  # in every assignment at least one of 3 and 4 refused


def test_unmask_request_must_match_the_signed_set():
    r = _round()
    requests = _until(r, UNMASK)
    honest = requests[3]
    for bad in (dataclasses.replace(honest, survivors=honest.survivors - {TARGET},
                                    dropped=honest.dropped | {TARGET}),
                dataclasses.replace(honest, signatures={k: v for k, v in
                                                        list(honest.signatures.items())[:4]})):
        with pytest.raises((ProtocolError, SignatureError)):
            copy.deepcopy(r.clients[3]).unmask(bad)
    assert isinstance(r.clients[3].unmask(honest), UnmaskResponse)


@pytest.mark.parametrize(("floors", "config", "floor"), [
    (SecAggFloors(), dict(num_clients=2, degree=1, threshold=1), "min_clients"),
    (SecAggFloors(min_degree=4), dict(num_clients=6, degree=2, threshold=2), "min_degree"),
    (SecAggFloors(min_threshold=3), dict(num_clients=4, degree=3, threshold=2),
     "min_threshold"),
    (SecAggFloors(min_bits=32), dict(num_clients=4, bits=24), "min_bits"),
    (SecAggFloors(max_clipping_range=1.0), dict(num_clients=4, clipping_range=8.0),
     "max_clipping_range"),
])
def test_config_below_the_node_floors_is_refused(floors, config, floor):
    kw = {"vector_length": 8, "clipping_range": 1.0, "bits": 24, **config}
    cfg = make_config(kw.pop("num_clients"), kw.pop("vector_length"), kw.pop("clipping_range"),
                      kw.pop("bits"), **kw)
    with pytest.raises(FloorError, match=floor) as info:
        SecAggClient(1, cfg, np.random.default_rng(0), floors=floors,
                     auth=authenticators([1])[1])
    assert "securefed-secagg-" in str(info.value)  # names the node-config key


@pytest.mark.parametrize("replay", ["round", "run"])
def test_signatures_replayed_from_another_round_or_run_are_refused(replay):
    old_keys = _until(_round(), SHARE_KEYS)[TARGET]
    old_requests = _until(_round(), UNMASK)
    kw = {"round_id": 1} if replay == "round" else {"run": "another-run"}
    r = _round(**kw)
    early = copy.deepcopy(r)
    honest = _until(early, SHARE_KEYS)[TARGET]
    replayed = dataclasses.replace(
        honest, neighbours={**honest.neighbours, 3: old_keys.neighbours[3]},
        signatures={**honest.signatures, 3: old_keys.signatures[3]})
    with pytest.raises(SignatureError):
        early.clients[TARGET].share_keys(replayed)
    requests = _until(r, UNMASK)  # consistency signatures of the old round/run: not counted
    with pytest.raises(SignatureError, match="only 0 valid"):
        copy.deepcopy(r.clients[3]).unmask(
            dataclasses.replace(requests[3], signatures=old_requests[3].signatures))
    assert isinstance(r.clients[3].unmask(requests[3]), UnmaskResponse)


def test_out_of_range_masked_sum_is_a_typed_aggregation_error():
    """Finding 5: a client whose masked input pushes the sum out of range."""
    r = _round(malicious=False)
    top = 2**r.cfg.bits - 1
    assert r.cfg.num_clients * r.cfg.quantization.grid_max < top
    bundles = _until(r, MASKED_INPUT)
    for i in r.ids:
        msg = r.clients[i].masked_input(bundles[i], r.x[i])
        if i == 1:  # push coordinate 0 of the sum to 2**bits - 1, beyond n * q_max
            vec = msg.vector.copy()
            vec[0] = (int(vec[0]) + top - int(r.expected_total()[0])) % 2**r.cfg.bits
            msg = dataclasses.replace(msg, vector=vec.astype(np.uint64))
        r.server.receive(msg)
    requests = close_stage(r.server, MASKED_INPUT)
    for i in r.ids:
        r.server.receive(r.clients[i].unmask(requests[i]))
    with pytest.raises(SumRangeError) as info:
        r.server.finish()
    assert isinstance(info.value, AggregationError)


@pytest.mark.parametrize(("mode", "drop"), [
    (mode, drop) for mode in MODES for drop in (None, SHARE_KEYS, MASKED_INPUT, CONSISTENCY,
                                                UNMASK)
    if drop != CONSISTENCY or mode == "malicious"])
def test_honest_rounds_stay_exact_with_a_dropout(mode, drop):
    from securefed.secagg import quantize, run_protocol, sum_mod

    malicious = mode == "malicious"
    cfg = make_config(6, 8, 1.0, 24, degree=4, threshold=3)
    x = {i: {"w": np.linspace(-1, 1, 8) * i / 6} for i in range(1, 7)}
    res = run_protocol(x, config=cfg, rng=np.random.default_rng(0),
                       dropouts={drop: [4]} if drop else None,
                       auths=authenticators(list(range(1, 7))) if malicious else None,
                       floors=SecAggFloors())
    rngs = np.random.default_rng(0).spawn(6)
    keep = [i for i in range(1, 7) if drop not in (SHARE_KEYS, MASKED_INPUT) or i != 4]
    expected = sum_mod([quantize(x[i]["w"], cfg.quantization, rngs[i - 1])[0] for i in keep],
                       cfg.bits)
    assert np.array_equal(res.total, expected) and res.survivors == tuple(keep)
