"""The state a SecAgg+ client keeps between stages, as plain values and back.

A SuperNode runs each stage of Bell et al. 2020 (arXiv:2009.05807, on Bonawitz et al.
2017) in a fresh call, so a :class:`~securefed.secagg.client.SecAggClient` persists what
the next stage needs: its two X25519 key pairs ``c_u`` and ``s_u``, the neighbours'
public keys, the self-mask seed ``b_u``, the Shamir shares it holds for its neighbours
and, in malicious mode, the members map ``U1`` and the survivor set ``U3`` it signed.

That state holds the client's **private** keys, seed and received shares: it belongs
where the client keeps secrets (``context.state``) and is never sent. Decoding checks
every field and raises :class:`~securefed.secagg.errors.ProtocolError` for a stage the
mode does not have, a key or seed of the wrong size, or a missing key pair after
:data:`~securefed.secagg.messages.ADVERTISE_KEYS`; a missing, mistyped or inconsistent
field raises ``KeyError``, ``TypeError`` or ``ValueError``, which
:meth:`SecAggClient.from_state_dict <securefed.secagg.client.SecAggClient.from_state_dict>`
reports as a :class:`ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefed.secagg.crypto import KeyPair
from securefed.secagg.errors import ProtocolError
from securefed.secagg.masks import SEED_BYTES
from securefed.secagg.messages import ADVERTISE_KEYS, CONSISTENCY, SHARE_BYTES, STAGES

__all__ = ["ClientState"]


def _key_bytes(pair: KeyPair | None) -> bytes:
    return b"" if pair is None else pair.private_key.private_bytes_raw()


def _key_pair(state: Mapping[str, object], key: str) -> KeyPair | None:
    raw = state[key]
    if not isinstance(raw, bytes):
        raise ProtocolError(f"{key} must be bytes")
    if not raw:
        return None
    private = X25519PrivateKey.from_private_bytes(raw)
    return KeyPair(private_key=private, public_bytes=private.public_key().public_bytes_raw())


@dataclass(frozen=True)
class ClientState:
    """Everything a client needs to resume between stages (config and rng excepted).

    Parameters
    ----------
    client_id : int
        The client's id.
    stage : str
        Its current stage (one of :data:`~securefed.secagg.messages.STAGES`).
    c, s : KeyPair or None
        The share-encryption and mask key pairs (``None`` before they are generated).
    neighbour_keys : dict
        ``{neighbour id: (c public key, s public key)}``.
    b_seed : bytes
        The self-mask seed ``b_u`` (empty before it is drawn).
    held : dict
        ``{neighbour id: (self-mask share, key share)}`` this client holds.
    members : dict
        (malicious mode) The members map ``{client id: roster name}``.
    u3 : frozenset of int
        (malicious mode) The survivor set this client signed.
    """

    client_id: int
    stage: str
    c: KeyPair | None
    s: KeyPair | None
    neighbour_keys: dict[int, tuple[bytes, bytes]]
    b_seed: bytes
    held: dict[int, tuple[int, int]]
    members: dict[int, str]
    u3: frozenset[int]

    def to_dict(self) -> dict[str, object]:
        """The state as plain values (ints, strings, bytes and lists of them)."""
        held = sorted(self.held)
        nbrs = sorted(self.neighbour_keys)
        return {
            "client-id": self.client_id,
            "stage": self.stage,
            "c-private": _key_bytes(self.c),
            "s-private": _key_bytes(self.s),
            "neighbour-ids": nbrs,
            "neighbour-c": [self.neighbour_keys[i][0] for i in nbrs],
            "neighbour-s": [self.neighbour_keys[i][1] for i in nbrs],
            "b-seed": self.b_seed,
            "held-ids": held,
            "held-b": [self.held[i][0].to_bytes(SHARE_BYTES, "big") for i in held],
            "held-s": [self.held[i][1].to_bytes(SHARE_BYTES, "big") for i in held],
            "member-ids": sorted(self.members),
            "member-names": [self.members[i] for i in sorted(self.members)],
            "u3": sorted(self.u3),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, object], *, malicious: bool) -> ClientState:
        """Decode :meth:`to_dict` output of a client of the given mode.

        Raises
        ------
        ProtocolError
            If the stage is unknown (or :data:`CONSISTENCY` in semi-honest mode), a
            key is not bytes, the seed is neither empty nor 32 bytes, or a stage after
            :data:`ADVERTISE_KEYS` lacks the key pairs.
        KeyError, TypeError, ValueError
            If a field is missing, mistyped or inconsistent.
        """
        client_id = int(state["client-id"])  # type: ignore[call-overload]
        stage = state["stage"]
        if stage not in STAGES or (stage == CONSISTENCY and not malicious):
            raise ProtocolError(f"unknown stage {stage!r} in client state")
        c, s = _key_pair(state, "c-private"), _key_pair(state, "s-private")
        nbrs = list(state["neighbour-ids"])  # type: ignore[call-overload]
        c_keys = list(state["neighbour-c"])  # type: ignore[call-overload]
        s_keys = list(state["neighbour-s"])  # type: ignore[call-overload]
        neighbour_keys = {
            int(i): (bytes(ck), bytes(sk)) for i, ck, sk in zip(nbrs, c_keys, s_keys, strict=True)
        }
        seed = state["b-seed"]
        if not isinstance(seed, bytes) or len(seed) not in (0, SEED_BYTES):
            raise ProtocolError("b-seed must be empty or 32 bytes")
        held_ids = list(state["held-ids"])  # type: ignore[call-overload]
        b_sh = list(state["held-b"])  # type: ignore[call-overload]
        s_sh = list(state["held-s"])  # type: ignore[call-overload]
        held = {
            int(i): (int.from_bytes(b, "big"), int.from_bytes(sv, "big"))
            for i, b, sv in zip(held_ids, b_sh, s_sh, strict=True)
        }
        m_ids = list(state.get("member-ids", []))  # type: ignore[call-overload]
        m_names = list(state.get("member-names", []))  # type: ignore[call-overload]
        members = {int(i): str(n) for i, n in zip(m_ids, m_names, strict=True)}
        u3 = frozenset(int(i) for i in state.get("u3", []))  # type: ignore[attr-defined]
        if stage != ADVERTISE_KEYS and (c is None or s is None):
            raise ProtocolError(f"client state in stage {stage!r} lacks its keys")
        return cls(client_id, str(stage), c, s, neighbour_keys, seed, held, members, u3)
