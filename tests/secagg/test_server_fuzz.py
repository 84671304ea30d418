"""Malformed and adversarial messages to the SecAgg+ server (hypothesis).

Each generated message is fed to a server mid-stage. It must be rejected with a typed
error (SecAggError or PayloadError), leave the server's state untouched, and the honest
round must then still finish with the exact aggregate: no crash, no wrong sum.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed.exceptions import PayloadError
from securefed.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    PRIME,
    SHARE_KEYS,
    UNMASK,
    AdvertiseKeys,
    KeysBroadcast,
    MaskedInput,
    SecAggError,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from securefed.secagg.messages import BUNDLE_BYTES
from tests.secagg._round import STEPS, Round

BAD_IDS = st.sampled_from([0, -1, 5, 99, 2**64, True, False, "2", None, 2.0, np.int64(2)])
BAD_KEYS = st.one_of(
    st.binary(max_size=64).filter(lambda b: len(b) != 32),
    st.sampled_from([None, "k" * 32, 32, bytearray(32)]),
)
BAD_SHARES = st.one_of(
    st.sampled_from([PRIME, PRIME + 1, -1, 2**600, "1", 1.5, None, True]),
    st.integers(max_value=-1),
    st.integers(min_value=PRIME),
)
JUNK = st.sampled_from(
    [
        None,
        0,
        "masked_input",
        b"",
        {"sender": 2},
        [1, 2],
        KeysBroadcast(2, {}),
        UnmaskRequest(2, frozenset(), frozenset()),
    ]
)


def _wrong_stage(stage: str, draw: Any) -> object:
    other = draw(st.sampled_from([s for s in STEPS if s != stage]))
    return {
        ADVERTISE_KEYS: AdvertiseKeys(2, bytes(32), bytes(range(32))),
        SHARE_KEYS: ShareKeys(2, {1: bytes(BUNDLE_BYTES)}),
        MASKED_INPUT: MaskedInput(2, np.zeros(8, dtype=np.uint64), 24),
        UNMASK: UnmaskResponse(2, {1: 1}, {}),
    }[other]


def _mutate(stage: str, msg: Any, r: Round, draw: Any) -> object:
    """A malformed variant of client 2's honest ``msg`` for ``stage``."""
    if stage == ADVERTISE_KEYS:
        field = draw(st.sampled_from(["c_public", "s_public", "same"]))
        if field == "same":
            return dataclasses.replace(msg, s_public=msg.c_public)
        return dataclasses.replace(msg, **{field: draw(BAD_KEYS)})
    if stage == SHARE_KEYS:
        cts = dict(msg.ciphertexts)
        kind = draw(st.sampled_from(["drop", "extra", "length", "type", "notdict", "self"]))
        victim = draw(st.sampled_from(sorted(cts)))
        if kind == "drop":
            del cts[victim]
        elif kind == "extra":
            cts[draw(st.sampled_from([9, 0, -3, "x"]))] = cts[victim]
        elif kind == "self":
            cts[2] = cts[victim]
        elif kind == "length":
            cts[victim] = draw(
                st.binary(max_size=2 * BUNDLE_BYTES).filter(lambda b: len(b) != BUNDLE_BYTES)
            )
        elif kind == "type":
            cts[victim] = draw(st.sampled_from([None, 7, "c" * BUNDLE_BYTES]))
        else:
            return dataclasses.replace(msg, ciphertexts=list(cts.items()))
        return dataclasses.replace(msg, ciphertexts=cts)
    if stage == MASKED_INPUT:
        vec = msg.vector
        kind = draw(st.sampled_from(["short", "long", "dtype", "2d", "big", "bits", "list"]))
        if kind == "short":
            vec = vec[: draw(st.integers(0, vec.size - 1))]
        elif kind == "long":
            vec = np.concatenate([vec, np.zeros(draw(st.integers(1, 5)), dtype=np.uint64)])
        elif kind == "dtype":
            vec = vec.astype(draw(st.sampled_from([np.int64, np.float64, np.uint32, object])))
        elif kind == "2d":
            vec = vec.reshape(2, -1)
        elif kind == "big":
            vec = vec.copy()
            vec[draw(st.integers(0, vec.size - 1))] = draw(st.integers(2**r.cfg.bits, 2**64 - 1))
        elif kind == "bits":
            return dataclasses.replace(msg, bits=draw(st.sampled_from([8, 23, 25, 64, None])))
        else:
            vec = vec.tolist()
        return dataclasses.replace(msg, vector=vec)
    # UNMASK
    b = dict(msg.b_shares)
    kind = draw(st.sampled_from(["drop", "extra", "value", "s_extra", "notdict"]))
    victim = draw(st.sampled_from(sorted(b)))
    if kind == "drop":
        del b[victim]
    elif kind == "extra":
        b[draw(st.sampled_from([2, 9, 0]))] = 1
    elif kind == "value":
        b[victim] = draw(BAD_SHARES)
    elif kind == "s_extra":
        return dataclasses.replace(msg, s_shares={victim: 1})
    else:
        return dataclasses.replace(msg, b_shares=None)
    return dataclasses.replace(msg, b_shares=b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stage=st.sampled_from(STEPS),
    kind=st.sampled_from(["junk", "wrong_stage", "duplicate", "sender", "mutate", "mutate"]),
    data=st.data(),
)
def test_server_rejects_malformed_messages(stage, kind, data):
    r = Round()
    r.run_until(stage)  # client 1's message delivered, clients 2..4 pending
    server = r.server
    before = server.survivors
    honest = r.honest[stage][2]
    if kind == "junk":
        bad = data.draw(JUNK)
    elif kind == "wrong_stage":
        bad = _wrong_stage(stage, data.draw)
    elif kind == "duplicate":
        bad = r.honest[stage][1]
    elif kind == "sender":
        bad = dataclasses.replace(honest, sender=data.draw(BAD_IDS))
    else:
        bad = _mutate(stage, honest, r, data.draw)
    try:
        server.receive(bad)
    except (SecAggError, PayloadError):
        pass
    else:  # pragma: no cover - the failure message names the message
        raise AssertionError(f"server accepted a malformed message: {bad!r}")
    assert server.survivors == before
    assert server.stage == stage
    result = r.complete()
    assert np.array_equal(result.total, r.expected_total())
    assert result.survivors == (1, 2, 3, 4)
