"""Malformed and adversarial server messages to a SecAgg+ client (hypothesis).

Client 2 of a recorded round (neighbours 3..6, client 1 is not one) is copied at each
stage and handed a forged message: a ``KeysBroadcast`` for another receiver, listing
the client itself, with too few neighbours or malformed, repeated or low-order keys; a
``ShareBundle`` with tampered, misrouted or forged ciphertexts or from non-neighbours;
an ``UnmaskRequest`` asking for both shares of a peer, for non-neighbours or for
another receiver; junk objects; and calls in the wrong stage. Each must be rejected
with a typed error (a tampered ciphertext with DecryptionError), leave the client's
stage unchanged, and the round must then still finish with the exact aggregate once
the client gets the honest message.

The last test pins the size of the adversarial fuzz of both test modules.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from securefed.secagg import (
    ADVERTISE_KEYS,
    DONE,
    MASKED_INPUT,
    PRIME,
    SHARE_KEYS,
    UNMASK,
    DecryptionError,
    KeysBroadcast,
    ProtocolError,
    SecAggClient,
    ShareBundle,
    UnmaskRequest,
)
from securefed.secagg.crypto import SHARE_ENCRYPTION_LABEL, derive_shared_key, encrypt_bundle
from securefed.secagg.messages import BUNDLE_BYTES, SHARE_BYTES
from tests.secagg import test_server_fuzz as server_fuzz
from tests.secagg._round import (
    FUZZ_TOTAL_MIN,
    JUNK_CONTAINERS,
    JUNK_SCALARS,
    STEPS,
    VICTIM,
    Transcript,
    client_step,
    expect_rejected,
    fuzz_settings,
    transcript,
)

CLIENT_SCENARIOS = (
    (None, SHARE_KEYS),
    (None, MASKED_INPUT),
    (None, UNMASK),
    (MASKED_INPUT, UNMASK),
)
"""(stage at which client 6 drops or None, stage client 2 sits in)."""
CLIENT_EXAMPLES = 900
"""Generated server messages per scenario; 4 scenarios give 3,600 per run."""
IDLE_STAGES = (ADVERTISE_KEYS, DONE)
IDLE_EXAMPLES = 300
"""Wrong-stage calls to a client before it advertised and after it finished: 600."""

FUZZ_TESTS = (
    "test_server_fuzz.test_server_rejects_malformed_messages",
    "test_client_fuzz.test_client_rejects_malformed_server_messages",
    "test_client_fuzz.test_client_rejects_calls_out_of_stage",
)
FUZZ_TOTAL = (
    server_fuzz.SERVER_EXAMPLES * len(server_fuzz.SERVER_SCENARIOS)
    + CLIENT_EXAMPLES * len(CLIENT_SCENARIOS)
    + IDLE_EXAMPLES * len(IDLE_STAGES)
)
"""10,500 generated adversarial messages per pytest run (6,300 server, 4,200 client)."""

LOW_ORDER_POINTS = (bytes(32), (1).to_bytes(32, "little"))
"""X25519 points whose shared secret is all zeros: key agreement must refuse them."""
BAD_PEERS = [0, -1, 2**64, 2**600, -(2**70), True, False, "3", None, 2.5, (3,)]
"""Neighbour ids that are no uint64 client id >= 1."""


@dataclasses.dataclass(frozen=True)
class Attack:
    """A forged ``message`` for the client's method of ``stage``; ``expected`` error."""

    kind: str
    stage: str
    message: Any
    expected: type[Exception] = ProtocolError

    def deliver(self, t: Transcript, client: SecAggClient) -> object:
        return client_step(client, self.stage, self.message, t.x[VICTIM])


def _junk(t: Transcript, stage: str, draw: Any) -> object:
    others = [t.reply_to(s) for s in STEPS[1:] if s != stage]
    client_messages = [t.messages[s][VICTIM] for s in STEPS]
    pool = [*JUNK_SCALARS, *others, *client_messages, t.replies[UNMASK], {"receiver": 2}]
    return draw(st.sampled_from(pool))


def _mutate_broadcast(t: Transcript, msg: KeysBroadcast, draw: Any) -> object:
    nb: dict[Any, Any] = dict(msg.neighbours)
    ids = sorted(nb)
    peer = draw(st.sampled_from(ids))
    c, s = nb[peer]
    own = t.messages[ADVERTISE_KEYS][VICTIM]
    threshold = t.cfg.graph.threshold
    kind = draw(
        st.sampled_from(
            ["self", "few", "peer_id", "entry", "key_bad", "repeat", "low_order", "notdict"]
        )
    )
    if kind == "self":
        nb[VICTIM] = draw(st.sampled_from([(own.c_public, own.s_public), (c, s)]))
    elif kind == "few":
        keep = draw(st.lists(st.sampled_from(ids), max_size=threshold - 1, unique=True))
        nb = {p: nb[p] for p in keep}
    elif kind == "peer_id":
        lookalikes = [float(peer), str(peer), np.int64(peer)]
        nb[draw(st.sampled_from(BAD_PEERS + lookalikes))] = nb.pop(peer)
    elif kind == "entry":
        nb[peer] = draw(st.sampled_from([[c, s], (c,), (c, s, c), (c, s, b""), None, c, {c: s}]))
    elif kind == "key_bad":
        bad = draw(server_fuzz.BAD_KEYS)
        nb[peer] = draw(st.sampled_from([(bad, s), (c, bad)]))
    elif kind == "repeat":
        other = nb[draw(st.sampled_from([p for p in ids if p != peer]))]
        twins = [(c, c), (s, s), (other[0], s), (c, other[1]), (own.c_public, s)]
        nb[peer] = draw(st.sampled_from([*twins, (c, own.s_public)]))
    elif kind == "low_order":
        nb[peer] = (draw(st.sampled_from(LOW_ORDER_POINTS)), s)
    else:
        items = list(nb.items())
        return dataclasses.replace(
            msg, neighbours=draw(st.sampled_from([items, tuple(items), *JUNK_CONTAINERS]))
        )
    return dataclasses.replace(msg, neighbours=nb)


def _forge_plaintext(t: Transcript, sender: int, plain: bytes) -> bytes:
    """A bundle ``sender`` (a malicious neighbour) encrypts with the real shared key."""
    sender_c = t.clients_at[MASKED_INPUT][sender]._c
    victim_c = t.messages[ADVERTISE_KEYS][VICTIM].c_public
    assert sender_c is not None
    key = derive_shared_key(
        sender_c.private_key, victim_c, SHARE_ENCRYPTION_LABEL, context=t.cfg.context
    )
    return encrypt_bundle(
        key, plain, sender=sender, receiver=VICTIM, round_id=t.cfg.round_id, stage=SHARE_KEYS
    )


def _mutate_bundle(t: Transcript, msg: ShareBundle, draw: Any) -> tuple[object, type[Exception]]:
    cts: dict[Any, Any] = dict(msg.ciphertexts)
    ids = sorted(cts)
    peer = draw(st.sampled_from(ids))
    ct = cts[peer]
    tampering = ["flip", "truncate", "extend", "random", "swap", "misrouted"]
    kind = draw(st.sampled_from([*tampering, "forged", "non_neighbour", "id_type", "ct_type"]))
    if kind == "flip":
        pos = draw(st.integers(0, 8 * len(ct) - 1))
        flipped = bytearray(ct)
        flipped[pos // 8] ^= 1 << (pos % 8)
        cts[peer] = bytes(flipped)
    elif kind == "truncate":
        cts[peer] = ct[: draw(st.integers(0, len(ct) - 1))]
    elif kind == "extend":
        cts[peer] = ct + draw(st.binary(min_size=1, max_size=32))
    elif kind == "random":
        cts[peer] = draw(st.binary(min_size=BUNDLE_BYTES, max_size=BUNDLE_BYTES))
    elif kind == "swap":  # a real bundle under another sender's name
        cts[peer] = cts[draw(st.sampled_from([p for p in ids if p != peer]))]
    elif kind == "misrouted":  # peer's real bundle for another receiver
        sent = t.messages[SHARE_KEYS][peer].ciphertexts
        cts[peer] = sent[draw(st.sampled_from(sorted(set(sent) - {VICTIM})))]
    elif kind == "forged":
        bad = draw(st.sampled_from(["length", "b_share", "s_share"]))
        if bad == "length":
            size = draw(st.integers(0, 3 * SHARE_BYTES).filter(lambda n: n != 2 * SHARE_BYTES))
            plain = bytes(size)
        else:
            big = draw(st.integers(PRIME, 2 ** (8 * SHARE_BYTES) - 1)).to_bytes(SHARE_BYTES, "big")
            plain = big + bytes(SHARE_BYTES) if bad == "b_share" else bytes(SHARE_BYTES) + big
        cts[peer] = _forge_plaintext(t, peer, plain)
        return dataclasses.replace(msg, ciphertexts=cts), ProtocolError
    elif kind == "non_neighbour":
        cts[draw(st.sampled_from([1, VICTIM, 7, 99, 2**64 - 1, *BAD_PEERS]))] = ct
    elif kind == "id_type":
        lookalikes = [float(peer), str(peer), np.int64(peer), (peer,)]
        cts[draw(st.sampled_from(lookalikes))] = cts.pop(peer)
    else:
        cts[peer] = draw(st.sampled_from([None, ct.hex(), 7, [ct], *JUNK_SCALARS]))
    expected = DecryptionError if kind in tampering else ProtocolError
    return dataclasses.replace(msg, ciphertexts=cts), expected


def _mutate_request(t: Transcript, msg: UnmaskRequest, draw: Any) -> object:
    name = draw(st.sampled_from(["survivors", "dropped"]))
    other = "dropped" if name == "survivors" else "survivors"
    ids: set[Any] = set(getattr(msg, name))
    everyone = sorted(msg.survivors | msg.dropped)
    kind = draw(st.sampled_from(["both", "both", "unknown", "elem_type", "notset"]))
    if kind == "both":  # the consistency rule: never both shares of one peer
        peer = draw(st.sampled_from(sorted(getattr(msg, other)) or everyone))
        return dataclasses.replace(
            msg, survivors=msg.survivors | {peer}, dropped=msg.dropped | {peer}
        )
    if kind == "unknown":
        ids.add(draw(st.sampled_from([1, VICTIM, 0, -1, 7, 99, 2**64, *BAD_PEERS])))
    elif kind == "elem_type":
        peer = draw(st.sampled_from(everyone))
        ids.discard(peer)
        ids.add(draw(st.sampled_from([float(peer), str(peer), np.int64(peer)])))
    else:
        seq = sorted(ids)
        bad = draw(st.sampled_from([seq, tuple(seq), dict.fromkeys(seq), *JUNK_CONTAINERS]))
        return dataclasses.replace(msg, **{name: bad})
    return dataclasses.replace(msg, **{name: frozenset(ids)})


def _attack(t: Transcript, stage: str, draw: Any) -> Attack:
    """A forged or malformed server message for client 2 sitting in ``stage``."""
    honest = t.reply_to(stage)
    kinds = ["junk", "wrong_stage", "receiver", "other_receiver", "field", *["mutate"] * 5]
    kind = draw(st.sampled_from(kinds))
    if kind == "junk":
        return Attack(kind, stage, _junk(t, stage, draw))
    if kind == "wrong_stage":
        return _wrong_stage(t, stage, draw)
    if kind == "receiver":
        bad = draw(
            st.one_of(
                st.sampled_from([1, 3, 0, -1, 99, 2**64, *JUNK_SCALARS]),
                st.integers(-(2**70), 2**70).filter(lambda i: i != VICTIM),
            )
        )
        return Attack(kind, stage, dataclasses.replace(honest, receiver=bad))
    if kind == "other_receiver":  # the honest message for another client
        prev = STEPS[STEPS.index(stage) - 1]
        peer = draw(st.sampled_from(sorted(set(t.replies[prev]) - {VICTIM})))
        return Attack(kind, stage, t.reply_to(stage, peer))
    if kind == "field":
        field = draw(st.sampled_from([f.name for f in dataclasses.fields(honest)]))
        pool = JUNK_SCALARS if field == "receiver" else JUNK_CONTAINERS
        return Attack(
            kind, stage, dataclasses.replace(honest, **{field: draw(st.sampled_from(pool))})
        )
    message, expected = _mutate(t, stage, draw)
    return Attack(kind, stage, message, expected)


def _mutate(t: Transcript, stage: str, draw: Any) -> tuple[object, type[Exception]]:
    """A malformed variant of the honest server message for ``stage``."""
    honest = t.reply_to(stage)
    if stage == SHARE_KEYS:
        return _mutate_broadcast(t, honest, draw), ProtocolError
    if stage == MASKED_INPUT:
        return _mutate_bundle(t, honest, draw)
    return _mutate_request(t, honest, draw), ProtocolError


def _wrong_stage(t: Transcript, stage: str, draw: Any) -> Attack:
    """A call of another stage's method: with its honest, a junk or a malformed message."""
    other = draw(st.sampled_from([s for s in STEPS if s != stage]))
    if other == ADVERTISE_KEYS:
        return Attack("wrong_stage", other, None)
    source = draw(st.sampled_from(["honest", "junk", "malformed"]))
    if source == "honest":
        message = t.reply_to(other)
    elif source == "junk":
        message = _junk(t, other, draw)
    else:
        message = _mutate(t, other, draw)[0]
    return Attack("wrong_stage", other, message)


def _run(t: Transcript, stage: str, attack: Attack) -> None:
    client = t.clients_at[stage][VICTIM]
    victim = copy.deepcopy(client)
    note(f"{attack.kind} -> {attack.stage}: {attack.message!r}")
    error = expect_rejected(lambda: attack.deliver(t, victim), attack.message)
    assert isinstance(error, attack.expected), f"{type(error).__name__}: {error}"
    assert victim.stage == stage
    t.check(t.finish_with_victim(victim, stage))


@pytest.mark.parametrize(
    ("drop_stage", "stage"), CLIENT_SCENARIOS, ids=[f"drop@{d}-{s}" for d, s in CLIENT_SCENARIOS]
)
@fuzz_settings(CLIENT_EXAMPLES)
@given(data=st.data())
def test_client_rejects_malformed_server_messages(drop_stage, stage, data):
    t = transcript(drop_stage)
    _run(t, stage, _attack(t, stage, data.draw))


@pytest.mark.parametrize("stage", IDLE_STAGES)
@fuzz_settings(IDLE_EXAMPLES)
@given(data=st.data())
def test_client_rejects_calls_out_of_stage(stage, data):
    t = transcript()
    attack = _wrong_stage(t, stage, data.draw)
    if attack.stage == stage:  # pragma: no cover - _wrong_stage never picks ``stage``
        raise AssertionError("not a wrong-stage call")
    _run(t, stage, attack)


def _examples(test: Any) -> int:
    """``max_examples`` times the number of parametrised cases, read off the decorators."""
    per_case = test._hypothesis_internal_use_settings.max_examples
    cases = [len(m.args[1]) for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    return int(per_case * math.prod(cases))


def test_fuzz_budget_is_at_least_10000_messages():
    modules = {"test_server_fuzz": server_fuzz, "test_client_fuzz": globals()}
    counted = 0
    for name in FUZZ_TESTS:
        module, func = name.split(".")
        namespace = modules[module]
        test = namespace[func] if isinstance(namespace, dict) else getattr(namespace, func)
        counted += _examples(test)
    assert counted == FUZZ_TOTAL
    assert FUZZ_TOTAL >= FUZZ_TOTAL_MIN
