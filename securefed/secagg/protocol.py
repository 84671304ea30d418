"""In-process SecAgg+ runs: clients and server state machines wired together.

:func:`run_protocol` drives one :class:`~securefed.secagg.server.SecAggServer` and one
:class:`~securefed.secagg.client.SecAggClient` per input through the four stages of
SecAgg+ (Bell et al. 2020, arXiv:2009.05807; Bonawitz et al. 2017), with no I/O. It is
the entry point of the tests, the benchmarks and deployment sizing.

Payload layout
--------------
Each client's payload is a ``dict[str, numpy.ndarray]``; all clients must have the same
keys and shapes. The payload is flattened in **sorted key order** (C order within each
array) into one float vector, and the aggregate is split back the same way, so the
result never depends on dict insertion order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from securefed.exceptions import ConfigError, PayloadError
from securefed.secagg.auth import Authenticator
from securefed.secagg.client import SecAggClient
from securefed.secagg.floors import SecAggFloors
from securefed.secagg.messages import (
    ADVERTISE_KEYS,
    CONSISTENCY,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    SecAggConfig,
)
from securefed.secagg.quantize import ClipReport
from securefed.secagg.server import SecAggServer

__all__ = ["DROPOUT_STAGES", "ProtocolResult", "flatten_payload", "run_protocol", "unflatten"]

DROPOUT_STAGES = (SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK)
"""Stages at which a client may vanish in :func:`run_protocol` (it sends nothing from
that stage on); :data:`CONSISTENCY` only in malicious mode."""

Layout = list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class ProtocolResult:
    """The outcome of one in-process SecAgg+ round.

    Parameters
    ----------
    aggregate : dict[str, numpy.ndarray]
        Dequantised **sums** over the survivors, by payload key (float64).
    survivors : tuple of int
        The clients whose inputs are in the sum, sorted.
    server_view : list
        Every client message the server received, in order (the message dataclasses).
    bytes_per_client : dict[str, dict[int, int]]
        For each stage, the wire size of what each client sent (see
        :mod:`securefed.secagg.messages`).
    total : numpy.ndarray of uint64
        The sum in ``Z_{2^bits}`` (with the weight field last, if any).
    weight_sum : int or None
        Sum of the survivors' weights, ``None`` without a weight field.
    clip_reports : dict[int, ClipReport]
        What quantisation clipped, per client that sent a masked input.
    """

    aggregate: dict[str, npt.NDArray[np.float64]]
    survivors: tuple[int, ...]
    server_view: list[object]
    bytes_per_client: dict[str, dict[int, int]]
    total: npt.NDArray[np.uint64]
    weight_sum: int | None
    clip_reports: dict[int, ClipReport]


def flatten_payload(
    payloads: Mapping[int, Mapping[str, npt.ArrayLike]],
) -> tuple[dict[int, npt.NDArray[np.float64]], Layout]:
    """Flatten equal-layout payloads into float64 vectors, keys in sorted order.

    Raises
    ------
    PayloadError
        If there are no payloads, a payload is empty, or keys or shapes differ.
    """
    if not payloads:
        raise PayloadError("no client payloads given")
    layout: Layout | None = None
    out: dict[int, npt.NDArray[np.float64]] = {}
    for cid, payload in payloads.items():
        if not isinstance(payload, Mapping) or not payload:
            raise PayloadError(f"payload of client {cid!r} must be a non-empty dict")
        arrays = {str(k): np.asarray(v, dtype=np.float64) for k, v in payload.items()}
        this = [(k, arrays[k].shape) for k in sorted(arrays)]
        if layout is None:
            layout = this
        elif this != layout:
            raise PayloadError(
                f"payload of client {cid!r} has keys/shapes {this}, expected {layout}"
            )
        out[cid] = np.concatenate([arrays[k].ravel() for k, _ in this])
    assert layout is not None
    return out, layout


def unflatten(
    vector: npt.NDArray[np.float64], layout: Layout
) -> dict[str, npt.NDArray[np.float64]]:
    """Split a flat vector back into arrays by key (inverse of :func:`flatten_payload`)."""
    out, pos = {}, 0
    for key, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[key] = vector[pos : pos + size].reshape(shape)
        pos += size
    return out


def _check_dropouts(
    dropouts: Mapping[str, Sequence[int]] | None, ids: set[int]
) -> dict[str, set[int]]:
    result = {stage: set[int]() for stage in DROPOUT_STAGES}
    seen: set[int] = set()
    for stage, who in (dropouts or {}).items():
        if stage not in result:
            raise ConfigError(f"dropout stage must be one of {DROPOUT_STAGES}, got {stage!r}")
        for cid in who:
            if cid not in ids:
                raise ConfigError(f"dropout client {cid!r} at {stage!r} is not a client")
            if cid in seen:
                raise ConfigError(f"client {cid} drops out at more than one stage")
            seen.add(cid)
            result[stage].add(cid)
    return result


def run_protocol(
    inputs: Mapping[int, Mapping[str, npt.ArrayLike]],
    *,
    config: SecAggConfig,
    dropouts: Mapping[str, Sequence[int]] | None = None,
    rng: np.random.Generator | None = None,
    weights: Mapping[int, int] | None = None,
    graph_seed: bytes | None = None,
    auths: Mapping[int, Authenticator] | None = None,
    floors: SecAggFloors | None = None,
) -> ProtocolResult:
    """Run one SecAgg+ round in-process and return the unmasked sum.

    Parameters
    ----------
    inputs : mapping of int to dict[str, array_like]
        ``{client_id: payload}``; equal keys and shapes, values in the clipping range.
    config : SecAggConfig
        Shared config; ``num_clients == len(inputs)`` and ``vector_length`` equal to the
        flattened payload size.
    dropouts : mapping of str to list of int, optional
        ``{"share_keys" | "masked_input" | "unmask": [client ids]}``: those clients
        vanish at that stage.
    rng : numpy.random.Generator, optional
        Source of the quantisation randomness: client ``i`` (in sorted id order) rounds
        with ``rng.spawn(n)[i]``. ``None`` uses fresh OS entropy. Keys and masks never
        use it.
    weights : mapping of int to int, optional
        Integer weights, required iff the config has a weight field.
    graph_seed : bytes, optional
        Public 32-byte seed of the neighbour graph; ``None`` draws one.
    auths : mapping of int to Authenticator, optional
        One per client: malicious mode (signed keys, consistency round). ``None``:
        semi-honest.
    floors : SecAggFloors, optional
        Every client's floors (``None``: none checked).

    Returns
    -------
    ProtocolResult

    Raises
    ------
    DropoutError
        If too many clients drop for the threshold (never a wrong aggregate).
    PayloadError, ConfigError, PrivacyError
        For malformed inputs, configs, or out-of-range values.
    """
    flat, layout = flatten_payload(inputs)
    ids = sorted(flat)
    if sum(int(np.prod(s, dtype=np.int64)) for _, s in layout) != config.vector_length:
        raise PayloadError(
            f"flattened payload has {flat[ids[0]].size} values, config.vector_length is "
            f"{config.vector_length}"
        )
    if config.has_weight and (weights is None or set(weights) != set(ids)):
        raise PayloadError("the config has a weight field: give one weight per client")
    drop = _check_dropouts(dropouts, set(ids))
    malicious = auths is not None
    if auths is not None and set(auths) != set(ids):
        raise ConfigError("auths must hold one Authenticator per client")
    if not malicious and drop[CONSISTENCY]:
        raise ConfigError("the consistency stage exists only in malicious mode (auths)")
    rng = np.random.default_rng() if rng is None else rng
    children = rng.spawn(len(ids))
    server = SecAggServer(config, ids, graph_seed, malicious=malicious)
    clients = {
        cid: SecAggClient(cid, config, child, auth=None if auths is None else auths[cid],
                          floors=floors)
        for cid, child in zip(ids, children, strict=True)
    }
    view: list[object] = []
    stages = DROPOUT_STAGES if malicious else tuple(s for s in DROPOUT_STAGES
                                                    if s != CONSISTENCY)
    sizes: dict[str, dict[int, int]] = {s: {} for s in (ADVERTISE_KEYS, *stages)}

    def send(stage: str, cid: int, msg: object) -> None:
        server.receive(msg)
        view.append(msg)
        sizes[stage][cid] = int(msg.wire_size)  # type: ignore[attr-defined]

    for cid in ids:
        send(ADVERTISE_KEYS, cid, clients[cid].advertise_keys())
    gone = set(drop[SHARE_KEYS])
    for cid, broadcast in server.broadcast_keys().items():
        if cid not in gone:
            send(SHARE_KEYS, cid, clients[cid].share_keys(broadcast))
    gone |= drop[MASKED_INPUT]
    for cid, bundle in server.route_shares().items():
        if cid not in gone:
            weight = None if weights is None else weights[cid]
            send(MASKED_INPUT, cid, clients[cid].masked_input(bundle, flat[cid], weight))
    if malicious:
        gone |= drop[CONSISTENCY]
        for cid, announce in server.request_consistency().items():
            if cid not in gone:
                send(CONSISTENCY, cid, clients[cid].consistency(announce))
    gone |= drop[UNMASK]
    for cid, request in server.request_unmask().items():
        if cid not in gone:
            send(UNMASK, cid, clients[cid].unmask(request))
    result = server.finish()
    reports = {cid: c.clip_report for cid, c in clients.items() if c.clip_report is not None}
    return ProtocolResult(
        aggregate=unflatten(result.values, layout),
        survivors=result.survivors,
        server_view=view,
        bytes_per_client=sizes,
        total=result.total,
        weight_sum=result.weight_sum,
        clip_reports=reports,
    )
