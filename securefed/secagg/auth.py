"""SecAgg+ against an active server: signed keys, a consistency round, one world.

The semi-honest protocol of :mod:`securefed.secagg.client` trusts the server to forward
honest keys and one survivor set. Against a server that deviates (Bonawitz et al. 2017,
CCS, Sec. 6, the active-adversary variant; Bell et al. 2020, arXiv:2009.05807, the
malicious variant) every client additionally:

1. **signs its advertised keys** with its long-term Ed25519 identity
   (:mod:`securefed.roster`), binding the run, the round, its SecAgg client id, its
   roster name and the digest of the round's config (:func:`config_digest`);
2. **checks the members map**: the server sends every client the map ``U1`` of SecAgg
   client ids to roster names. Names must be distinct roster members (no Sybils: the
   server can neither present one member twice nor one that does not exist, and its own
   keys never verify), at most ``n`` of them, this client under its own id, and every
   neighbour's keys must carry that neighbour's valid signature;
3. **binds the members map into the share encryption**: the digest of the map is part of
   the HKDF context of the share-encryption keys, so a client accepts a neighbour's
   shares only if both were shown the same map (one "world" of at most ``n`` members);
4. **signs the survivor set** ``U3`` it is told in the consistency round, and reveals
   shares only when :func:`consistency_threshold` ``T = floor((n + t - 1) / 2) + 1``
   distinct members of the map have validly signed that same set, and its unmask
   request is exactly what that set implies.

Why ``T`` and not ``t``: a server that tells some honest neighbours of a target that it
survived and others that it dropped gets both of its secrets once each group reaches the
signature count. Colluding clients sign both sets; honest members sign one. With at most
``n`` members in the one world and ``c`` colluders, two groups need ``2T <= n + c``: with
``2T > n + t - 1`` that takes ``c >= t`` colluders, the same bound under which SecAgg+
already gives the server a client's self-mask. ``t`` signatures alone would fall to the
``2t - k`` colluding neighbours of finding 2 (see ``docs/threat-model.md``).

Replays: a signature binds run, round and client id, so one made for another round, run
or id never verifies. Old keys replayed in the same (run, round) are useless: shares are
encrypted to the receiver's fresh key and only accepted from a sender that knows its own
share-encryption private key, which no party ever reveals.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from securefed.exceptions import ConfigError, SignatureError
from securefed.roster import Identity, Roster, signing_message
from securefed.secagg.errors import FloorError, ProtocolError
from securefed.secagg.messages import SecAggConfig

__all__ = [
    "ADVERTISE_DOMAIN",
    "CONSISTENCY_DOMAIN",
    "Authenticator",
    "check_survivor_set",
    "config_digest",
    "consistency_threshold",
    "members_digest",
]

ADVERTISE_DOMAIN = "securefed/secagg/advertise-keys"
"""Signature domain of the advertised public keys."""
CONSISTENCY_DOMAIN = "securefed/secagg/consistency"
"""Signature domain of the survivor set ``U3`` in the consistency round."""


def consistency_threshold(num_clients: int, threshold: int) -> int:
    """``T = floor((n + t - 1) / 2) + 1``: signatures on one ``U3`` needed to unmask.

    The smallest ``T`` with ``2T > n + t - 1``: two disjoint groups of honest members
    cannot both reach ``T`` unless ``t`` or more members collude (module docstring).
    """
    return (int(num_clients) + int(threshold) - 1) // 2 + 1


@functools.lru_cache(maxsize=64)
def config_digest(config: SecAggConfig) -> bytes:
    """SHA-256 of every parameter of the round's config (signed with the keys)."""
    q = config.quantization
    fields: tuple[str | int, ...] = (
        q.num_clients, config.vector_length, repr(float(q.clipping_range)), q.bits,
        q.grid_max, q.max_weight, q.on_overflow, config.graph.degree,
        config.graph.threshold, config.round_id,
    )
    return hashlib.sha256(signing_message("securefed/secagg/config", *fields)).digest()


def members_digest(members: Mapping[int, str]) -> bytes:
    """SHA-256 of the members map ``{client id: roster name}`` (sorted by id).

    Memoised on the map's items: a client derives one share key per neighbour from it.
    """
    return _members_digest(tuple(sorted(members.items())))


@functools.lru_cache(maxsize=256)
def _members_digest(items: tuple[tuple[int, str], ...]) -> bytes:
    fields: list[str | int] = []
    for cid, name in items:
        fields += [cid, name]
    return hashlib.sha256(signing_message("securefed/secagg/members", *fields)).digest()


def _id_list(ids: Iterable[int]) -> bytes:
    return b"".join(int(i).to_bytes(8, "big") for i in sorted(ids))


@dataclass(frozen=True)
class Authenticator:
    """A client's long-term identity, its roster and the run it signs for.

    Parameters
    ----------
    identity : Identity
        This node's roster name and Ed25519 signing key.
    roster : Roster
        The verification keys of every member, from the node's own config.
    run : str
        The run identifier bound into every signature (the Flower run id).

    Raises
    ------
    ConfigError
        If the identity is not the roster's member of that name, or ``run`` is empty.
    """

    identity: Identity
    roster: Roster
    run: str

    def __post_init__(self) -> None:
        if not isinstance(self.run, str) or not self.run:
            raise ConfigError(f"run must be a non-empty string, got {self.run!r}")
        if self.roster.members.get(self.identity.name) != self.identity.public_bytes:
            raise ConfigError(f"identity {self.identity.name!r} is not the roster's member "
                              "of that name")

    def __copy__(self) -> Authenticator:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Authenticator:
        return self  # immutable: a copied client shares its node's identity

    @property
    def name(self) -> str:
        """This node's roster name."""
        return self.identity.name

    # ------------------------------------------------------------- advertise
    def _keys_fields(self, config: SecAggConfig, cid: int, name: str, c_public: bytes,
                     s_public: bytes) -> tuple[str | int | bytes, ...]:
        return (self.run, config.round_id, cid, name, config_digest(config), c_public,
                s_public)

    def sign_keys(self, config: SecAggConfig, client_id: int, c_public: bytes,
                  s_public: bytes) -> bytes:
        """Sign this client's advertised keys (run, round, id, name, config bound)."""
        return self.identity.sign(ADVERTISE_DOMAIN, *self._keys_fields(
            config, client_id, self.name, c_public, s_public))

    def check_members(self, config: SecAggConfig, client_id: int,
                      members: object) -> dict[int, str]:
        """Validate the members map ``U1`` the server sent; return it as a dict.

        Raises
        ------
        SignatureError
            If a name is not a roster member.
        ProtocolError
            If the map is malformed, longer than ``n``, names one member twice (a
            Sybil), or lacks this client under its own id and name.
        """
        if not isinstance(members, dict) or not members:
            raise ProtocolError("malicious mode needs the members map (client id -> name)")
        if len(members) > config.num_clients:
            raise ProtocolError(f"members map lists {len(members)} clients; the round has "
                                f"n = {config.num_clients}")
        out: dict[int, str] = {}
        for cid, name in members.items():
            if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(name, str):
                raise ProtocolError(f"malformed members entry {cid!r}: {name!r}")
            if name not in self.roster:
                raise SignatureError(f"members map names {name!r}, who is not in this node's "
                                     "roster")
            out[cid] = name
        if len(set(out.values())) != len(out):
            raise ProtocolError("members map lists one roster member under two client ids "
                                "(a Sybil); refused")
        if out.get(client_id) != self.name:
            raise ProtocolError(f"members map does not list this node ({self.name!r}) as "
                                f"client {client_id}")
        return out

    def verify_keys(self, config: SecAggConfig, peer: int, name: str, signature: object,
                    c_public: bytes, s_public: bytes) -> None:
        """Check a neighbour's signature on its advertised keys.

        Raises
        ------
        SignatureError
            If it does not verify under the roster key of ``name`` for this run, round,
            id and config.
        """
        self.roster.verify(name, signature, ADVERTISE_DOMAIN,
                           *self._keys_fields(config, peer, name, c_public, s_public))

    # ----------------------------------------------------------- consistency
    def _set_fields(self, config: SecAggConfig, signer: int, name: str, session: bytes,
                    survivors: Iterable[int] | bytes,
                    digest: bytes | None = None) -> tuple[str | int | bytes, ...]:
        ids = survivors if isinstance(survivors, bytes) else _id_list(survivors)
        digest = config_digest(config) if digest is None else digest
        return (self.run, config.round_id, signer, name, digest, session, ids)

    def sign_survivors(self, config: SecAggConfig, client_id: int, session: bytes,
                       survivors: Iterable[int]) -> bytes:
        """Sign the survivor set ``U3`` this client was told (consistency round)."""
        return self.identity.sign(CONSISTENCY_DOMAIN, *self._set_fields(
            config, client_id, self.name, session, survivors))

    def check_consistency(self, config: SecAggConfig, members: Mapping[int, str],
                          session: bytes, survivors: frozenset[int],
                          signatures: object) -> int:
        """Count the distinct members that validly signed ``survivors``; need ``T``.

        Signers must be in the survivor set and in the members map (whose names are
        distinct roster members); a signature that does not verify is not counted.
        Checking stops once ``T`` signatures verified.

        Returns
        -------
        int
            The number of valid signatures counted (``T``).

        Raises
        ------
        SignatureError
            If fewer than :func:`consistency_threshold` signatures verify; the message
            names those that were refused.
        ProtocolError
            If the signatures are not a mapping of ids to bytes.
        """
        if not isinstance(signatures, dict):
            raise ProtocolError("the consistency signatures must be a dict of id -> bytes")
        need = consistency_threshold(config.num_clients, config.graph.threshold)
        ids, digest = _id_list(survivors), config_digest(config)
        valid, refused = 0, []
        for signer, sig in sorted(signatures.items(), key=lambda kv: repr(kv[0])):
            if valid >= need:
                break
            name = members.get(signer) if isinstance(signer, int) else None
            if name is None or signer not in survivors:
                refused.append(f"{signer!r}: not a survivor in the members map")
                continue
            try:
                self.roster.verify(name, sig, CONSISTENCY_DOMAIN,
                                   *self._set_fields(config, signer, name, session, ids,
                                                     digest))
            except SignatureError as exc:
                refused.append(f"{signer}: {exc}")
                continue
            valid += 1
        if valid < need:
            raise SignatureError(
                f"only {valid} valid signatures on this survivor set; unmasking needs "
                f"T = {need} (n = {config.num_clients}, t = {config.graph.threshold}). "
                f"Refused: {'; '.join(refused) or 'none'}")
        return valid


def check_survivor_set(config: SecAggConfig, members: Mapping[int, str], client_id: int,
                       survivors: object) -> frozenset[int]:
    """Validate the ``U3`` of a consistency request against the members map.

    Raises
    ------
    ProtocolError
        If it is not a set of member ids or lacks this client.
    FloorError
        If it has fewer than ``T`` members (no set that small can be unmasked).
    """
    if not isinstance(survivors, set | frozenset) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in survivors):
        raise ProtocolError("the survivor set must be a set of client ids")
    unknown = set(survivors) - set(members)
    if unknown:
        raise ProtocolError(f"survivor set names {sorted(unknown)}, not in the members map")
    if client_id not in survivors:
        raise ProtocolError(f"survivor set lacks client {client_id}, which sent its input")
    need = consistency_threshold(config.num_clients, config.graph.threshold)
    if len(survivors) < need:
        raise FloorError(f"survivor set has {len(survivors)} clients; the consistency round "
                         f"needs T = {need} signatures from them")
    return frozenset(survivors)

