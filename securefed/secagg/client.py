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
config below its floors (:class:`~securefed.secagg.floors.SecAggFloors`). The checks it
runs on the server's messages live in :mod:`securefed.secagg.client_checks`.

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

from securefed.exceptions import ConfigError, PayloadError
from securefed.secagg.auth import Authenticator, check_survivor_set, members_digest
from securefed.secagg.client_checks import (
    check_neighbours,
    check_receiver,
    check_signed_neighbours,
    check_unmask_request,
    check_unsigned,
    is_client_id,
)
from securefed.secagg.client_state import ClientState
from securefed.secagg.crypto import (
    SHARE_ENCRYPTION_LABEL,
    KeyPair,
    decrypt_bundle,
    derive_shared_key,
    encrypt_bundle,
    generate_keypair,
)
from securefed.secagg.errors import FloorError, ProtocolError
from securefed.secagg.floors import SecAggFloors
from securefed.secagg.masks import SEED_BYTES, add_mod, expand_mask, pairwise_mask_between
from securefed.secagg.messages import (
    ADVERTISE_KEYS,
    CONSISTENCY,
    DONE,
    MASKED_INPUT,
    SHARE_BYTES,
    SHARE_KEYS,
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
    check_stage,
)
from securefed.secagg.quantize import ClipReport, quantize
from securefed.secagg.shamir import PRIME, split

__all__ = ["SecAggClient"]


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

    def _share_key(self, peer_public: bytes) -> bytes:
        """The share-encryption key with a neighbour whose ``c`` public key is given:
        HKDF of ``ECDH(c_u, c_v)`` under the round's context and, in malicious mode, the
        digest of the members map (neighbours accept each other's shares only if both
        were shown the same map)."""
        assert self._c is not None
        extra = members_digest(self._members) if self.malicious else b""
        return derive_shared_key(self._c.private_key, peer_public, SHARE_ENCRYPTION_LABEL,
                                 context=self.config.context + extra)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, object]:
        """Everything needed to resume between stages, as plain values.

        It holds the client's **private** keys, self-mask seed and received shares:
        keep it where the client keeps secrets (a SuperNode's ``context.state``),
        never send it. The config and the quantisation generator are not included:
        the caller passes them to :meth:`from_state_dict`
        (:class:`~securefed.secagg.client_state.ClientState`).
        """
        return ClientState(self.client_id, self._stage, self._c, self._s,
                           self._neighbour_keys, self._b_seed, self._held, self._members,
                           self._u3).to_dict()

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
            saved = ClientState.from_dict(state, malicious=auth is not None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed SecAgg+ client state: {exc!r}") from None
        client._stage, client._c, client._s = saved.stage, saved.c, saved.s
        client._neighbour_keys, client._b_seed = saved.neighbour_keys, saved.b_seed
        client._held, client._members, client._u3 = saved.held, saved.members, saved.u3
        return client

    def advertise_keys(self) -> AdvertiseKeys:
        """Generate the key pairs ``c_u`` and ``s_u`` and advertise their public halves."""
        check_stage(self._stage, ADVERTISE_KEYS, "advertise_keys")
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
        check_stage(self._stage, SHARE_KEYS, "share_keys")
        assert self._c is not None and self._s is not None
        check_receiver(broadcast, KeysBroadcast, self.client_id)
        neighbours = check_neighbours(broadcast, self.config,
                                      (self._c.public_bytes, self._s.public_bytes),
                                      self.client_id)
        if self.auth is None:
            check_unsigned(broadcast, "signatures", "members")
            members: dict[int, str] = {}
        else:
            members = check_signed_neighbours(self.auth, self.config, self.client_id,
                                              broadcast, neighbours)
        t = self.config.graph.threshold
        self._members = members
        self._b_seed = secrets.token_bytes(SEED_BYTES)
        ids = sorted(neighbours)
        b_shares = split(self._b_seed, t, ids)
        s_shares = split(self._s.private_key.private_bytes_raw(), t, ids)
        ciphertexts = {}
        for peer in ids:
            plain = b_shares[peer].to_bytes(SHARE_BYTES, "big") + s_shares[peer].to_bytes(
                SHARE_BYTES, "big"
            )
            ciphertexts[peer] = encrypt_bundle(
                self._share_key(neighbours[peer][0]), plain, sender=self.client_id,
                receiver=peer, round_id=self.config.round_id, stage=SHARE_KEYS,
            )
        self._neighbour_keys = neighbours
        self._stage = MASKED_INPUT
        return ShareKeys(self.client_id, ciphertexts)

    def _decrypt_bundles(self, bundle: ShareBundle) -> dict[int, tuple[int, int]]:
        check_receiver(bundle, ShareBundle, self.client_id)
        if not isinstance(bundle.ciphertexts, dict):
            raise ProtocolError("the ShareBundle ciphertexts must be a dict")
        held: dict[int, tuple[int, int]] = {}
        for peer, ct in dict(bundle.ciphertexts).items():
            if not is_client_id(peer) or peer not in self._neighbour_keys:
                raise ProtocolError(f"share bundle from {peer!r}, which is not a neighbour")
            plain = decrypt_bundle(
                self._share_key(self._neighbour_keys[peer][0]), ct, sender=peer,
                receiver=self.client_id, round_id=self.config.round_id, stage=SHARE_KEYS,
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
        check_stage(self._stage, MASKED_INPUT, "masked_input")
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
            mask = pairwise_mask_between(self.client_id, peer, self._s.private_key,
                                         self._neighbour_keys[peer][1], cfg.context,
                                         cfg.masked_length, cfg.bits)
            y = add_mod(y, mask, cfg.bits)
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
        check_stage(self._stage, CONSISTENCY, "consistency")
        assert self.auth is not None
        check_receiver(request, ConsistencyRequest, self.client_id)
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
        check_stage(self._stage, UNMASK, "unmask")
        check_receiver(request, UnmaskRequest, self.client_id)
        survivors, dropped = check_unmask_request(request, self.config, self._held, self.auth,
                                                  self._members, self._u3)
        response = UnmaskResponse(
            self.client_id,
            b_shares={p: self._held[p][0] for p in sorted(survivors)},
            s_shares={p: self._held[p][1] for p in sorted(dropped)},
        )
        self._stage = DONE
        return response
