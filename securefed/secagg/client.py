"""The SecAgg+ client as an explicit state machine with no I/O.

One :class:`SecAggClient` walks the stages of Bell et al. 2020 (arXiv:2009.05807, on
Bonawitz et al. 2017) once, for one round::

    advertise_keys()            ADVERTISE_KEYS -> SHARE_KEYS
    share_keys(KeysBroadcast)   SHARE_KEYS     -> MASKED_INPUT
    masked_input(ShareBundle,   MASKED_INPUT   -> UNMASK (semi-honest)
                 x, weight)                    -> CONSISTENCY (malicious)
    consistency(ConsistencyRequest)  CONSISTENCY -> UNMASK   (malicious only)
    unmask(UnmaskRequest)       UNMASK         -> DONE

Malicious mode (an :class:`~securefed.secagg.auth.Authenticator` is given; Bonawitz et
al. 2017 Sec. 6, Bell et al. 2020 malicious variant) signs the advertised keys, checks
the neighbours' signatures and the members map, binds that map into the share
encryption, and unmasks only after the consistency round (:mod:`securefed.secagg.auth`).
In both modes the client refuses (:class:`FloorError`) to mask with fewer than ``t``
share bundles, to unmask with fewer than ``t`` survivors (itself included), and a
config below its floors (:class:`~securefed.secagg.floors.SecAggFloors`).

Calling a method in any other stage raises :class:`ProtocolError` naming the current
and the expected stage. A method that raises leaves the stage unchanged.

The masked input of client ``u`` is ``y_u = q(x_u) + PRG(b_u) + sum_v sign(u, v)
PRG(s_uv) mod 2**bits`` over the neighbours ``v`` whose share bundles reached ``u``,
with ``sign = +1`` if ``u < v`` else ``-1``. ``b_u`` is a fresh 32-byte seed and
``s_uv`` the HKDF key of ``ECDH(s_u, s_v)``; ``b_u`` and the private key ``s_u`` are
Shamir-shared (threshold ``t``) among the neighbours.

Consistency rule: in the unmask stage the client reveals, for each neighbour, either
the share of its self-mask seed (neighbour survived) or of its pairwise key (neighbour
dropped), never both; a request for both, for a non-neighbour, or for a neighbour
whose shares it never received is refused with :class:`ProtocolError`.
"""

from __future__ import annotations

import secrets

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefed.exceptions import ConfigError, PayloadError
from securefed.secagg.auth import Authenticator, check_survivor_set, members_digest
from securefed.secagg.crypto import (
    PAIRWISE_MASK_LABEL,
    PUBLIC_KEY_BYTES,
    SHARE_ENCRYPTION_LABEL,
    KeyPair,
    decrypt_bundle,
    derive_shared_key,
    encrypt_bundle,
    generate_keypair,
)
from securefed.secagg.errors import FloorError, ProtocolError
from securefed.secagg.floors import SecAggFloors
from securefed.secagg.masks import SEED_BYTES, add_mod, expand_mask, pairwise_mask, pairwise_sign
from securefed.secagg.messages import (
    ADVERTISE_KEYS,
    CONSISTENCY,
    DONE,
    MASKED_INPUT,
    SHARE_BYTES,
    SHARE_KEYS,
    STAGES,
    UNMASK,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeysBroadcast,
    MaskedInput,
    SecAggConfig,
    ShareBundle,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from securefed.secagg.quantize import ClipReport, quantize
from securefed.secagg.shamir import PRIME, split

__all__ = ["SecAggClient"]


_MAX_ID = 2**64 - 1


def _is_id(value: object) -> bool:
    """A client id as it travels: an int (not a bool) in ``[1, 2**64 - 1]``."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_ID


def _check_receiver(message: object, kind: type, client_id: int) -> None:
    receiver = getattr(message, "receiver", None)
    if not isinstance(message, kind) or not _is_id(receiver) or receiver != client_id:
        raise ProtocolError(f"expected the {kind.__name__} for client {client_id}")


def _check_unsigned(message: object, *names: str) -> None:
    """Semi-honest mode: the malicious-mode fields must be empty dicts."""
    for name in names:
        value = getattr(message, name, None)
        if not isinstance(value, dict) or value:
            raise ProtocolError(f"{type(message).__name__}.{name} must be empty in "
                                "semi-honest mode")


def _check_stage(current: str, expected: str, action: str) -> None:
    if current != expected:
        raise ProtocolError(
            f"{action} is only legal in stage {expected!r}; current stage is {current!r}"
        )


class SecAggClient:
    """One client of a SecAgg+ round.

    Parameters
    ----------
    client_id : int
        The client's id, ``>= 1`` (also its Shamir x-coordinate).
    config : SecAggConfig
        The round's shared config.
    rng_for_quantization : numpy.random.Generator
        Randomness of the stochastic rounding only; keys, seeds and Shamir coefficients
        always come from the operating system's CSPRNG.
    auth : Authenticator or None
        This node's identity, roster and run: malicious mode. ``None``: semi-honest.
    floors : SecAggFloors or None
        This node's floors, checked against ``config`` at once (``None``: none).

    Raises
    ------
    ConfigError
        For an invalid argument.
    FloorError
        If ``config`` is below ``floors``.
    """

    def __init__(
        self, client_id: int, config: SecAggConfig, rng_for_quantization: np.random.Generator,
        *, auth: Authenticator | None = None, floors: SecAggFloors | None = None,
    ) -> None:
        if isinstance(client_id, bool) or not isinstance(client_id, int) or client_id < 1:
            raise ConfigError(f"client_id must be an int >= 1, got {client_id!r}")
        if not isinstance(config, SecAggConfig):
            raise ConfigError(f"config must be a SecAggConfig, got {config!r}")
        if not isinstance(rng_for_quantization, np.random.Generator):
            raise ConfigError(
                "rng_for_quantization must be a numpy.random.Generator, got "
                f"{type(rng_for_quantization).__name__}"
            )
        if auth is not None and not isinstance(auth, Authenticator):
            raise ConfigError(f"auth must be an Authenticator or None, got {auth!r}")
        if floors is not None:
            floors.check(config)
        self.client_id = client_id
        self.config = config
        self.auth = auth
        self._rng = rng_for_quantization
        self._members: dict[int, str] = {}
        self._u3: frozenset[int] = frozenset()
        self._stage = ADVERTISE_KEYS
        self._c: KeyPair | None = None
        self._s: KeyPair | None = None
        self._neighbour_keys: dict[int, tuple[bytes, bytes]] = {}
        self._b_seed = b""
        self._held: dict[int, tuple[int, int]] = {}  # peer -> (b share, s share)
        self.clip_report: ClipReport | None = None

    @property
    def stage(self) -> str:
        """The current stage (one of :data:`~securefed.secagg.messages.STAGES`)."""
        return self._stage

    @property
    def malicious(self) -> bool:
        """Whether this client runs the malicious-server protocol (signed, consistency)."""
        return self.auth is not None

    def _share_context(self) -> bytes:
        """HKDF context of the share encryption: the round, and in malicious mode the
        digest of the members map (neighbours accept each other's shares only if both
        were shown the same map)."""
        extra = members_digest(self._members) if self.malicious else b""
        return self.config.context + extra

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, object]:
        """Everything needed to resume between stages, as plain values.

        It holds the client's **private** keys, self-mask seed and received shares:
        keep it where the client keeps secrets (a SuperNode's ``context.state``),
        never send it. The config and the quantisation generator are not included:
        the caller passes them to :meth:`from_state_dict`.
        """
        held = sorted(self._held)
        nbrs = sorted(self._neighbour_keys)
        return {
            "client-id": self.client_id,
            "stage": self._stage,
            "c-private": b"" if self._c is None else self._c.private_key.private_bytes_raw(),
            "s-private": b"" if self._s is None else self._s.private_key.private_bytes_raw(),
            "neighbour-ids": nbrs,
            "neighbour-c": [self._neighbour_keys[i][0] for i in nbrs],
            "neighbour-s": [self._neighbour_keys[i][1] for i in nbrs],
            "b-seed": self._b_seed,
            "held-ids": held,
            "held-b": [self._held[i][0].to_bytes(SHARE_BYTES, "big") for i in held],
            "held-s": [self._held[i][1].to_bytes(SHARE_BYTES, "big") for i in held],
            "member-ids": sorted(self._members),
            "member-names": [self._members[i] for i in sorted(self._members)],
            "u3": sorted(self._u3),
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, object],
        config: SecAggConfig,
        rng_for_quantization: np.random.Generator,
        *,
        auth: Authenticator | None = None,
    ) -> SecAggClient:
        """Resume a client from :meth:`state_dict` output (``auth`` as when it was made).

        Raises
        ------
        ProtocolError
            If the state is malformed (a field missing, mistyped or inconsistent).
        """
        try:
            client = cls(int(state["client-id"]), config, rng_for_quantization,  # type: ignore[call-overload]
                         auth=auth)
            stage = state["stage"]
            if stage not in STAGES or (stage == CONSISTENCY and auth is None):
                raise ProtocolError(f"unknown stage {stage!r} in client state")
            client._stage = str(stage)
            for attr, key in (("_c", "c-private"), ("_s", "s-private")):
                raw = state[key]
                if not isinstance(raw, bytes):
                    raise ProtocolError(f"{key} must be bytes")
                if raw:
                    private = X25519PrivateKey.from_private_bytes(raw)
                    public = private.public_key().public_bytes_raw()
                    setattr(client, attr, KeyPair(private_key=private, public_bytes=public))
            nbrs = list(state["neighbour-ids"])  # type: ignore[call-overload]
            c_keys = list(state["neighbour-c"])  # type: ignore[call-overload]
            s_keys = list(state["neighbour-s"])  # type: ignore[call-overload]
            client._neighbour_keys = {
                int(i): (bytes(c), bytes(s)) for i, c, s in zip(nbrs, c_keys, s_keys, strict=True)
            }
            seed = state["b-seed"]
            if not isinstance(seed, bytes) or len(seed) not in (0, SEED_BYTES):
                raise ProtocolError("b-seed must be empty or 32 bytes")
            client._b_seed = seed
            held = list(state["held-ids"])  # type: ignore[call-overload]
            b_sh = list(state["held-b"])  # type: ignore[call-overload]
            s_sh = list(state["held-s"])  # type: ignore[call-overload]
            client._held = {
                int(i): (int.from_bytes(b, "big"), int.from_bytes(s, "big"))
                for i, b, s in zip(held, b_sh, s_sh, strict=True)
            }
            m_ids = list(state.get("member-ids", []))  # type: ignore[call-overload]
            m_names = list(state.get("member-names", []))  # type: ignore[call-overload]
            client._members = {int(i): str(n) for i, n in zip(m_ids, m_names, strict=True)}
            client._u3 = frozenset(int(i) for i in state.get("u3", []))  # type: ignore[attr-defined]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed SecAgg+ client state: {exc!r}") from None
        if client._stage != ADVERTISE_KEYS and (client._c is None or client._s is None):
            raise ProtocolError(f"client state in stage {client._stage!r} lacks its keys")
        return client

    def advertise_keys(self) -> AdvertiseKeys:
        """Generate the key pairs ``c_u`` and ``s_u`` and advertise their public halves."""
        _check_stage(self._stage, ADVERTISE_KEYS, "advertise_keys")
        c, s = generate_keypair(), generate_keypair()
        name, signature = "", b""
        if self.auth is not None:
            name = self.auth.name
            signature = self.auth.sign_keys(self.config, self.client_id, c.public_bytes,
                                            s.public_bytes)
        self._c, self._s = c, s
        self._stage = SHARE_KEYS
        return AdvertiseKeys(self.client_id, c.public_bytes, s.public_bytes, name, signature)

    def share_keys(self, broadcast: KeysBroadcast) -> ShareKeys:
        """Shamir-share ``b_u`` and ``s_u`` among the neighbours; encrypt one bundle each.

        Raises
        ------
        ProtocolError
            If the broadcast is for another client, lists this client, holds malformed
            keys, repeats a key, or names fewer than ``t`` or more than ``k``
            neighbours; in malicious mode, if the members map is malformed, longer than
            ``n`` or names a member twice.
        SignatureError
            (malicious mode) If a neighbour's signature is missing or does not verify
            under the roster key of the name the members map gives it, for this run,
            round, id and config (substituted keys, Sybils, non-members, replays).
        """
        _check_stage(self._stage, SHARE_KEYS, "share_keys")
        assert self._c is not None and self._s is not None
        _check_receiver(broadcast, KeysBroadcast, self.client_id)
        if not isinstance(broadcast.neighbours, dict):
            raise ProtocolError("the KeysBroadcast neighbours must be a dict")
        neighbours = dict(broadcast.neighbours)
        t = self.config.graph.threshold
        if self.client_id in neighbours:
            raise ProtocolError("a client is not its own neighbour")
        if len(neighbours) < t:
            raise FloorError(f"{len(neighbours)} neighbours cannot hold a {t}-of-k sharing")
        if len(neighbours) > self.config.graph.degree:
            raise ProtocolError(f"{len(neighbours)} neighbours; the round's degree is "
                                f"k = {self.config.graph.degree}")
        seen = {self._c.public_bytes, self._s.public_bytes}
        for peer, keys in neighbours.items():
            if not _is_id(peer) or not isinstance(keys, tuple) or len(keys) != 2:
                raise ProtocolError(f"malformed neighbour entry {peer!r}")
            for key in keys:
                if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES or key in seen:
                    raise ProtocolError(f"malformed or repeated public key of client {peer}")
                seen.add(key)
        if self.auth is None:
            _check_unsigned(broadcast, "signatures", "members")
        members = self._check_signed(broadcast, neighbours) if self.auth is not None else {}
        self._members = members
        self._b_seed = secrets.token_bytes(SEED_BYTES)
        ids = sorted(neighbours)
        b_shares = split(self._b_seed, t, ids)
        s_shares = split(self._s.private_key.private_bytes_raw(), t, ids)
        ciphertexts = {}
        for peer in ids:
            key = derive_shared_key(
                self._c.private_key,
                neighbours[peer][0],
                SHARE_ENCRYPTION_LABEL,
                context=self._share_context(),
            )
            plain = b_shares[peer].to_bytes(SHARE_BYTES, "big") + s_shares[peer].to_bytes(
                SHARE_BYTES, "big"
            )
            ciphertexts[peer] = encrypt_bundle(
                key,
                plain,
                sender=self.client_id,
                receiver=peer,
                round_id=self.config.round_id,
                stage=SHARE_KEYS,
            )
        self._neighbour_keys = neighbours
        self._stage = MASKED_INPUT
        return ShareKeys(self.client_id, ciphertexts)

    def _check_signed(self, broadcast: KeysBroadcast,
                      neighbours: dict[int, tuple[bytes, bytes]]) -> dict[int, str]:
        """Malicious mode: the members map and every neighbour's signature."""
        assert self.auth is not None
        members = self.auth.check_members(self.config, self.client_id, broadcast.members)
        signatures = broadcast.signatures
        if not isinstance(signatures, dict):
            raise ProtocolError("the KeysBroadcast signatures must be a dict")
        for peer in sorted(neighbours):
            name = members.get(peer)
            if name is None:
                raise ProtocolError(f"neighbour {peer} is not in the members map")
            c_public, s_public = neighbours[peer]
            self.auth.verify_keys(self.config, peer, name, signatures.get(peer), c_public,
                                  s_public)
        return members

    def _decrypt_bundles(self, bundle: ShareBundle) -> dict[int, tuple[int, int]]:
        assert self._c is not None
        _check_receiver(bundle, ShareBundle, self.client_id)
        if not isinstance(bundle.ciphertexts, dict):
            raise ProtocolError("the ShareBundle ciphertexts must be a dict")
        held: dict[int, tuple[int, int]] = {}
        for peer, ct in dict(bundle.ciphertexts).items():
            if not _is_id(peer) or peer not in self._neighbour_keys:
                raise ProtocolError(f"share bundle from {peer!r}, which is not a neighbour")
            key = derive_shared_key(
                self._c.private_key,
                self._neighbour_keys[peer][0],
                SHARE_ENCRYPTION_LABEL,
                context=self._share_context(),
            )
            plain = decrypt_bundle(
                key,
                ct,
                sender=peer,
                receiver=self.client_id,
                round_id=self.config.round_id,
                stage=SHARE_KEYS,
            )
            if len(plain) != 2 * SHARE_BYTES:
                raise ProtocolError(f"share bundle from {peer} has {len(plain)} bytes")
            b_share = int.from_bytes(plain[:SHARE_BYTES], "big")
            s_share = int.from_bytes(plain[SHARE_BYTES:], "big")
            if b_share >= PRIME or s_share >= PRIME:
                raise ProtocolError(f"share from {peer} is not a field element")
            held[peer] = (b_share, s_share)
        return held

    def masked_input(
        self, bundle: ShareBundle, x: npt.ArrayLike, weight: int | None = None
    ) -> MaskedInput:
        """Decrypt the received shares, then quantise and mask ``x``.

        Parameters
        ----------
        bundle : ShareBundle
            The share bundles the server routed to this client; their senders are the
            neighbours this client masks with.
        x : array_like of float
            ``vector_length`` values in the clipping range (pre-scaled by the weight
            for weighted means).
        weight : int or None
            The integer weight sent in the last coordinate; required exactly when the
            config has a weight field (``max_weight > 0``).

        Raises
        ------
        ProtocolError, DecryptionError
            If a bundle is not from a neighbour or fails authentication.
        FloorError
            If fewer than ``t`` bundles arrived: the input would be masked by too few
            neighbours' masks (the server could then ask for the self-mask alone).
        PayloadError
            If ``x`` has the wrong length or non-finite values, or ``weight`` is wrong.
        PrivacyError
            If a value is outside the clipping range (``on_overflow="error"``).
        """
        _check_stage(self._stage, MASKED_INPUT, "masked_input")
        cfg = self.config
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1 or arr.size != cfg.vector_length:
            raise PayloadError(f"x must be a vector of length {cfg.vector_length}, got {arr.shape}")
        if cfg.has_weight:
            max_w = cfg.quantization.max_weight
            ok = isinstance(weight, int | np.integer) and not isinstance(weight, bool)
            if not ok or not 0 <= int(weight) <= max_w:  # type: ignore[arg-type]
                raise PayloadError(f"weight must be an int in [0, {max_w}], got {weight!r}")
        elif weight is not None:
            raise PayloadError("weight given but the config has no weight field (max_weight=0)")
        held = self._decrypt_bundles(bundle)
        t = cfg.graph.threshold
        if len(held) < t:
            raise FloorError(f"only {len(held)} share bundles reached client "
                             f"{self.client_id}; masking needs at least t = {t} neighbours "
                             "holding its shares")
        q, report = quantize(arr, cfg.quantization, self._rng)
        if cfg.has_weight:
            q = np.append(q, np.uint64(int(weight))).astype(np.uint64)  # type: ignore[arg-type]
        y = add_mod(q, expand_mask(self._b_seed, cfg.masked_length, cfg.bits), cfg.bits)
        assert self._s is not None
        for peer in sorted(held):
            s_uv = derive_shared_key(
                self._s.private_key,
                self._neighbour_keys[peer][1],
                PAIRWISE_MASK_LABEL,
                context=cfg.context,
            )
            sign = pairwise_sign(self.client_id, peer)
            y = add_mod(y, pairwise_mask(s_uv, cfg.masked_length, cfg.bits, sign), cfg.bits)
        self._held = held
        self.clip_report = report
        self._stage = CONSISTENCY if self.malicious else UNMASK
        return MaskedInput(self.client_id, y, cfg.bits)

    def consistency(self, request: ConsistencyRequest) -> ConsistencySignature:
        """Sign the survivor set ``U3`` the server announced (malicious mode).

        Raises
        ------
        ProtocolError
            If the request is for another client, or the set is not a set of members
            that includes this client.
        FloorError
            If the set is smaller than the consistency threshold ``T``.
        """
        _check_stage(self._stage, CONSISTENCY, "consistency")
        assert self.auth is not None
        _check_receiver(request, ConsistencyRequest, self.client_id)
        u3 = check_survivor_set(self.config, self._members, self.client_id, request.survivors)
        signature = self.auth.sign_survivors(self.config, self.client_id,
                                             members_digest(self._members), u3)
        self._u3 = u3
        self._stage = UNMASK
        return ConsistencySignature(self.client_id, signature)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal self-mask shares of surviving and key shares of dropped neighbours.

        Raises
        ------
        ProtocolError
            If the request is for another client, a peer is both surviving and dropped
            (the consistency rule), or a peer is not a neighbour whose shares this
            client holds; in malicious mode, if the request differs from what the
            signed ``U3`` implies.
        FloorError
            If fewer than ``t`` clients of its neighbourhood (itself included) survived.
        SignatureError
            (malicious mode) If fewer than ``T`` members validly signed this client's
            ``U3``.
        """
        _check_stage(self._stage, UNMASK, "unmask")
        _check_receiver(request, UnmaskRequest, self.client_id)
        for name in ("survivors", "dropped"):
            ids = getattr(request, name)
            if not isinstance(ids, set | frozenset) or not all(_is_id(p) for p in ids):
                raise ProtocolError(f"the UnmaskRequest {name} must be a set of client ids")
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise ProtocolError(
                f"consistency rule: refusing to reveal both the self-mask and the pairwise-key "
                f"share of {sorted(both)}"
            )
        unknown = (survivors | dropped) - set(self._held)
        if unknown:
            raise ProtocolError(
                f"asked for shares of {sorted(unknown, key=repr)}, which are not neighbours "
                "whose shares this client holds"
            )
        t = self.config.graph.threshold
        if len(survivors) + 1 < t:
            raise FloorError(f"only {len(survivors)} surviving neighbours (and this client); "
                             f"unmasking needs at least t = {t}")
        if self.auth is None:
            _check_unsigned(request, "signatures")
        else:
            self.auth.check_consistency(self.config, self._members,
                                        members_digest(self._members), self._u3,
                                        request.signatures)
            held = set(self._held)
            if survivors != held & self._u3 or dropped != held - self._u3:
                raise ProtocolError(
                    "the unmask request is not what the signed survivor set implies: "
                    f"survivors {sorted(survivors)} (expected {sorted(held & self._u3)}), "
                    f"dropped {sorted(dropped)} (expected {sorted(held - self._u3)})")
        response = UnmaskResponse(
            self.client_id,
            b_shares={p: self._held[p][0] for p in sorted(survivors)},
            s_shares={p: self._held[p][1] for p in sorted(dropped)},
        )
        self._stage = DONE
        return response
