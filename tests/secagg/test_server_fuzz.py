"""Malformed and adversarial client messages to the SecAgg+ server (hypothesis).

Each generated message is fed to a copy of the server of a recorded round, mid-stage
(client 1's message of the stage is in, client 2's is the one forged). It must be
rejected with a typed error (SecAggError or PayloadError), leave the server's stage and
client sets untouched, and the honest round must then still finish with the exact
aggregate: no crash, no wrong sum. Scenarios cover every stage, and rounds where
client 6 dropped before ``SHARE_KEYS`` or ``MASKED_INPUT`` ended (dropped senders,
late messages, pairwise-key shares).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from securefed.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    PRIME,
    SHARE_KEYS,
    UNMASK,
    AdvertiseKeys,
    MaskedInput,
    ShareKeys,
    UnmaskResponse,
)
from securefed.secagg.messages import BUNDLE_BYTES
from tests.secagg._round import (
    JUNK_CONTAINERS,
    JUNK_SCALARS,
    STEPS,
    VICTIM,
    Transcript,
    expect_rejected,
    fuzz_settings,
    transcript,
)

SERVER_SCENARIOS = (
    (None, ADVERTISE_KEYS),
    (None, SHARE_KEYS),
    (None, MASKED_INPUT),
    (None, UNMASK),
    (SHARE_KEYS, MASKED_INPUT),
    (SHARE_KEYS, UNMASK),
    (MASKED_INPUT, UNMASK),
)
"""(stage at which client 6 drops or None, stage the server is collecting)."""
SERVER_EXAMPLES = 900
"""Generated messages per scenario; 7 scenarios give 6,300 per run."""

BAD_SENDERS = st.one_of(
    st.sampled_from([0, -1, 7, 99, 2**64, 2**600, *JUNK_SCALARS]),
    st.integers(min_value=7, max_value=2**80),
    st.integers(min_value=-(2**80), max_value=0),
)
"""Senders that are not in the round (ids 1..6) or not an int at all."""
BAD_KEYS = st.one_of(
    st.binary(max_size=64).filter(lambda b: len(b) != 32),
    st.sampled_from(["k" * 32, bytearray(32), memoryview(bytes(32)), 32, *JUNK_SCALARS]),
)
BAD_SHARES = st.one_of(
    st.sampled_from([PRIME, PRIME + 1, 2**521, -1, "1", 1.5, None, True, False, np.int64(5)]),
    st.integers(max_value=-1, min_value=-(2**700)),
    st.integers(min_value=PRIME, max_value=2**700),
)
BAD_BITS = st.sampled_from([0, 8, 23, 25, 32, 64, -24, "24", 24.0, np.int64(24), [24], True])
DTYPES = [np.int64, np.uint32, np.uint8, np.int8, np.float64, np.float32, np.bool_, object, ">u8"]


class ForgedAdvertiseKeys(AdvertiseKeys):
    """A look-alike subclass: the server accepts only the exact message types."""


def _id_lookalikes(v: int) -> list[Any]:
    """Things equal to (or spelling) the id ``v`` without being an int."""
    return [np.int64(v), np.uint64(v), float(v), str(v), (v,)]


def _junk(t: Transcript, draw: Any) -> object:
    replies = [r for stage in STEPS[:3] for r in t.replies[stage].values()]
    honest = t.messages[ADVERTISE_KEYS][VICTIM]
    forged = ForgedAdvertiseKeys(honest.sender, honest.c_public, honest.s_public)
    pool: list[Any] = [*JUNK_SCALARS, {"sender": 2}, [1, 2], forged, t.replies[UNMASK]]
    return draw(st.sampled_from(pool + replies))


def _mutate_keys(t: Transcript, msg: AdvertiseKeys, draw: Any) -> object:
    kind = draw(st.sampled_from(["bad", "bad", "same", "copy"]))
    field = draw(st.sampled_from(["c_public", "s_public"]))
    if kind == "bad":
        return dataclasses.replace(msg, **{field: draw(BAD_KEYS)})
    if kind == "same":
        return dataclasses.replace(msg, s_public=msg.c_public)
    first = t.messages[ADVERTISE_KEYS][1]  # already advertised by client 1
    stolen = draw(st.sampled_from([first.c_public, first.s_public]))
    return dataclasses.replace(msg, **{field: stolen})


def _mutate_shares(t: Transcript, msg: ShareKeys, draw: Any) -> object:
    cts: dict[Any, Any] = dict(msg.ciphertexts)
    victim = draw(st.sampled_from(sorted(cts)))
    kind = draw(
        st.sampled_from(["drop", "extra", "key_type", "length", "type", "notdict", "empty"])
    )
    if kind == "drop":
        del cts[victim]
    elif kind == "extra":
        not_neighbours = [1, VICTIM, 0, -3, 7, 99, 2**64, "x", None, (3,)]
        cts[draw(st.sampled_from(not_neighbours))] = cts[victim]
    elif kind == "key_type":
        cts[draw(st.sampled_from(_id_lookalikes(victim)))] = cts.pop(victim)
    elif kind == "length":
        cts[victim] = draw(
            st.binary(max_size=2 * BUNDLE_BYTES).filter(lambda b: len(b) != BUNDLE_BYTES)
        )
    elif kind == "type":
        ct = cts[victim]
        cts[victim] = draw(st.sampled_from([None, 7, ct.hex(), bytearray(ct), [ct], *JUNK_SCALARS]))
    elif kind == "notdict":
        items = list(cts.items())
        return dataclasses.replace(
            msg, ciphertexts=draw(st.sampled_from([items, tuple(items), *JUNK_CONTAINERS]))
        )
    else:
        cts = {}
    return dataclasses.replace(msg, ciphertexts=cts)


def _mutate_masked(t: Transcript, msg: MaskedInput, draw: Any) -> object:
    vec: Any = msg.vector
    kinds = ["short", "long", "dtype", "shape", "big", "bits", "container"]
    kind = draw(st.sampled_from(kinds))
    if kind == "short":
        vec = vec[: draw(st.integers(0, vec.size - 1))]
    elif kind == "long":
        vec = np.concatenate([vec, np.zeros(draw(st.integers(1, 64)), dtype=np.uint64)])
    elif kind == "dtype":
        vec = vec.astype(draw(st.sampled_from(DTYPES)))
    elif kind == "shape":
        shape = draw(st.sampled_from([(2, -1), (-1, 1), (1, -1), (2, 2, -1)]))
        vec = vec.reshape(shape)
    elif kind == "big":
        vec = vec.copy()
        vec[draw(st.integers(0, vec.size - 1))] = draw(st.integers(2**t.cfg.bits, 2**64 - 1))
    elif kind == "bits":
        return dataclasses.replace(
            msg, bits=draw(st.one_of(BAD_BITS, st.sampled_from(JUNK_SCALARS)))
        )
    else:
        vec = draw(
            st.sampled_from(
                [vec.tolist(), tuple(vec.tolist()), vec.tobytes(), vec[0], *JUNK_CONTAINERS]
            )
        )
    return dataclasses.replace(msg, vector=vec)


def _mutate_unmask(t: Transcript, msg: UnmaskResponse, draw: Any) -> object:
    name = draw(st.sampled_from(["b_shares", "s_shares"]))
    shares: dict[Any, Any] = dict(getattr(msg, name))
    kinds = ["extra", "notdict", "move"] + (["drop", "value", "key_type"] if shares else [])
    kind = draw(st.sampled_from(kinds))
    victim = draw(st.sampled_from(sorted(shares))) if shares else None
    if kind == "move":  # one peer's share in both or in the wrong dict
        other = "s_shares" if name == "b_shares" else "b_shares"
        source = dict(getattr(msg, other))
        if not source:
            return dataclasses.replace(msg, b_shares=msg.s_shares, s_shares=msg.b_shares)
        peer = draw(st.sampled_from(sorted(source)))
        shares[peer] = source[peer]
    elif kind == "drop":
        del shares[victim]
    elif kind == "extra":
        candidates = [p for p in [1, VICTIM, 0, 7, 99, t.dropout, "x", None] if p not in shares]
        shares[draw(st.sampled_from(candidates))] = draw(st.integers(0, PRIME - 1))
    elif kind == "value":
        shares[victim] = draw(BAD_SHARES)
    elif kind == "key_type":
        assert victim is not None
        shares[draw(st.sampled_from(_id_lookalikes(victim)))] = shares.pop(victim)
    else:
        items = list(shares.items())
        notdict = draw(st.sampled_from([items, tuple(items), frozenset(shares), *JUNK_CONTAINERS]))
        return dataclasses.replace(msg, **{name: notdict})
    return dataclasses.replace(msg, **{name: shares})


MUTATORS = {
    ADVERTISE_KEYS: _mutate_keys,
    SHARE_KEYS: _mutate_shares,
    MASKED_INPUT: _mutate_masked,
    UNMASK: _mutate_unmask,
}


def _bad_message(t: Transcript, stage: str, draw: Any) -> tuple[str, object]:
    """A forged or malformed client message for a server collecting ``stage``."""
    honest = t.messages[stage][VICTIM]
    kinds = ["junk", "wrong_stage", "duplicate", "sender", "field", *["mutate"] * 5]
    if t.drop_stage is not None:
        kinds += ["dropped", "late"]
    kind = draw(st.sampled_from(kinds))
    if kind == "junk":
        return kind, _junk(t, draw)
    if kind == "wrong_stage":
        other = draw(st.sampled_from([s for s in STEPS if s != stage]))
        return kind, draw(st.sampled_from(list(t.messages[other].values())))
    if kind == "duplicate":  # client 1's message is already in
        return kind, draw(
            st.sampled_from([t.messages[stage][1], dataclasses.replace(honest, sender=1)])
        )
    if kind == "sender":
        return kind, dataclasses.replace(honest, sender=draw(BAD_SENDERS))
    if kind == "field":
        field = draw(st.sampled_from([f.name for f in dataclasses.fields(honest)]))
        pool = JUNK_SCALARS if field in ("sender", "bits") else JUNK_CONTAINERS
        if field.endswith("_public"):
            pool = (*JUNK_SCALARS, bytearray(32), "k" * 32)
        return kind, dataclasses.replace(honest, **{field: draw(st.sampled_from(pool))})
    if kind == "dropped":  # client 6 left before this stage
        return kind, dataclasses.replace(honest, sender=t.dropout)
    if kind == "late":  # client 6's withheld message of the stage it dropped in
        return kind, t.withheld[t.drop_stage]
    return kind, MUTATORS[stage](t, honest, draw)


@pytest.mark.parametrize(
    ("drop_stage", "stage"), SERVER_SCENARIOS, ids=[f"drop@{d}-{s}" for d, s in SERVER_SCENARIOS]
)
@fuzz_settings(SERVER_EXAMPLES)
@given(data=st.data())
def test_server_rejects_malformed_messages(drop_stage, stage, data):
    t = transcript(drop_stage)
    server = t.server(stage)
    before = server.survivors
    kind, bad = _bad_message(t, stage, data.draw)
    note(f"{kind}: {bad!r}")
    expect_rejected(lambda: server.receive(bad), bad)
    assert server.stage == stage
    assert server.survivors == before
    t.check(t.finish(server, stage))
