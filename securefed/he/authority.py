"""The CKKS key authority: its own policy, its key's lifetime, and what it decrypts.

The authority is a SuperNode that holds the only CKKS secret key (``authority`` role) or
hands it to enrolled members (``shared``). Everything that decides what it releases
comes from **its own node config** (:class:`AuthorityPolicy`), never from a server
message: the key role, the roster it trusts, the floor ``min_terms``, the value bound
``max_abs``, the flooding security ``flooding_bits`` and the key lifetime
``rotation_rounds``. The server only relays (``docs/threat-model.md``).

It decrypts (:func:`decrypt_contributions`) only a sum it adds itself from signed
contributions of at least ``min_terms`` distinct roster members, for a round later than
any it decrypted before, under a key used for fewer than ``rotation_rounds``
decryptions, and floods the result (:mod:`securefed.he.flooding`, Li and Micciancio
2021) before it leaves. Pure: no Flower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.exceptions import ConfigError, PayloadError, PrivacyError, SignatureError
from securefed.he.ckks import decrypt_sum, sum_frames
from securefed.he.flooding import MIN_FLOODING_BITS, Flooding, flood, flooding_for
from securefed.he.keys import KEY_ROLES, CKKSConfig
from securefed.he.signed import ENROLL, Contribution, verify_contributions
from securefed.privacy.noise import RandomSource
from securefed.roster import Roster

__all__ = [
    "NODE_CONFIG_CKKS_KEYS",
    "AuthorityPolicy",
    "KeyState",
    "decrypt_contributions",
    "verify_enrolment",
]

NODE_CONFIG_AUTHORITY = "securefed-ckks-authority"
NODE_CONFIG_KEY_ROLE = "securefed-ckks-key-role"
NODE_CONFIG_MIN_TERMS = "securefed-ckks-min-terms"
NODE_CONFIG_MAX_ABS = "securefed-ckks-max-abs"
NODE_CONFIG_FLOODING_BITS = "securefed-ckks-flooding-bits"
NODE_CONFIG_ROTATION = "securefed-ckks-key-rotation-rounds"
#: Node config keys of :class:`AuthorityPolicy` (every CKKS node has them).
NODE_CONFIG_CKKS_KEYS = (NODE_CONFIG_AUTHORITY, NODE_CONFIG_KEY_ROLE, NODE_CONFIG_MIN_TERMS,
                         NODE_CONFIG_MAX_ABS, NODE_CONFIG_FLOODING_BITS, NODE_CONFIG_ROTATION)


def _int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class AuthorityPolicy:
    """What a CKKS node accepts, from its own node config (see the module docstring).

    Parameters
    ----------
    authority : str
        Roster name of the key authority (the node whose name this is acts as one).
    key_role : str
        ``"authority"`` or ``"shared"`` (:data:`securefed.he.KEY_ROLES`).
    min_terms : int
        Fewest distinct members' contributions in a decrypted sum (>= 2).
    max_abs : float
        Bound on every value of one contribution (``max(clipping range, 1)``).
    flooding_bits : int
        Statistical security of the flooding (>= 40).
    rotation_rounds : int
        Decryptions allowed under one key; then a fresh key is required.
    """

    authority: str
    key_role: str = "authority"
    min_terms: int = 2
    max_abs: float = 1.0
    flooding_bits: int = MIN_FLOODING_BITS
    rotation_rounds: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.authority, str) or not self.authority:
            raise ConfigError(f"{NODE_CONFIG_AUTHORITY} must name a roster member, got "
                              f"{self.authority!r}")
        KEY_ROLES.get(self.key_role)
        _int(self.min_terms, NODE_CONFIG_MIN_TERMS, 2)
        _int(self.flooding_bits, NODE_CONFIG_FLOODING_BITS, MIN_FLOODING_BITS)
        _int(self.rotation_rounds, NODE_CONFIG_ROTATION, 1)
        if isinstance(self.max_abs, bool) or not isinstance(self.max_abs, int | float) \
                or not (math.isfinite(self.max_abs) and self.max_abs > 0):
            raise ConfigError(f"{NODE_CONFIG_MAX_ABS} must be a finite number > 0, got "
                              f"{self.max_abs!r}")
        object.__setattr__(self, "max_abs", float(self.max_abs))

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> AuthorityPolicy:
        """Read the policy from a node config.

        Raises
        ------
        ConfigError
            If :data:`NODE_CONFIG_AUTHORITY` is unset (CKKS then refuses to run: no
            server message may stand in for it), or a value is invalid.
        """
        if node_config.get(NODE_CONFIG_AUTHORITY) in (None, ""):
            raise ConfigError(
                f"CKKS needs this node's own config: set {list(NODE_CONFIG_CKKS_KEYS)} "
                "(flower-supernode --node-config; securefed run writes them for "
                "simulation and in-process runs)")
        kw: dict[str, Any] = {"authority": node_config[NODE_CONFIG_AUTHORITY]}
        for key, name in ((NODE_CONFIG_KEY_ROLE, "key_role"),
                          (NODE_CONFIG_MIN_TERMS, "min_terms"),
                          (NODE_CONFIG_MAX_ABS, "max_abs"),
                          (NODE_CONFIG_FLOODING_BITS, "flooding_bits"),
                          (NODE_CONFIG_ROTATION, "rotation_rounds")):
            if node_config.get(key) not in (None, ""):
                kw[name] = node_config[key]
        return cls(**kw)

    def to_node_config(self) -> dict[str, str | int | float]:
        """The node config entries of this policy."""
        return {NODE_CONFIG_AUTHORITY: self.authority, NODE_CONFIG_KEY_ROLE: self.key_role,
                NODE_CONFIG_MIN_TERMS: self.min_terms, NODE_CONFIG_MAX_ABS: self.max_abs,
                NODE_CONFIG_FLOODING_BITS: self.flooding_bits,
                NODE_CONFIG_ROTATION: self.rotation_rounds}


@dataclass
class KeyState:
    """The secret key a node holds, and how much it has been used.

    Attributes
    ----------
    epoch : int
        Key generation counter of the authority (1 for the first key of a run).
    config : CKKSConfig
        The key's parameters.
    secret_context : bytes
        Serialised secret-key context.
    fingerprint : str
        SHA-256 of the public context (what contributions are signed under).
    decryptions : int
        Decryptions released under this key.
    last_round : int
        Latest round decrypted (a round is decrypted at most once).
    """

    epoch: int
    config: CKKSConfig
    secret_context: bytes
    fingerprint: str
    decryptions: int = 0
    last_round: int = 0

    def to_fields(self) -> dict[str, Any]:
        """Flat fields for a Flower ``ConfigRecord`` in the node's own state."""
        c = self.config
        return {"epoch": self.epoch, "secret-context": self.secret_context,
                "key-sha256": self.fingerprint, "decryptions": self.decryptions,
                "last-round": self.last_round, "poly-modulus-degree": c.poly_modulus_degree,
                "coeff-bits": list(c.coeff_mod_bit_sizes), "scale-bits": c.global_scale_bits,
                "key-role": c.key_role}

    @classmethod
    def from_fields(cls, f: Mapping[str, Any]) -> KeyState:
        """Inverse of :meth:`to_fields`."""
        config = CKKSConfig(poly_modulus_degree=int(f["poly-modulus-degree"]),
                            coeff_mod_bit_sizes=tuple(f["coeff-bits"]),
                            global_scale_bits=int(f["scale-bits"]), key_role=str(f["key-role"]))
        return cls(epoch=int(f["epoch"]), config=config,
                   secret_context=bytes(f["secret-context"]),
                   fingerprint=str(f["key-sha256"]), decryptions=int(f["decryptions"]),
                   last_round=int(f["last-round"]))


def verify_enrolment(roster: Roster, enrolled: Sequence[tuple[str, bytes, bytes]], *,
                     run_id: int) -> None:
    """Check every ``(name, transport key, signature)`` before a secret key is wrapped.

    Raises
    ------
    SignatureError
        A name outside the roster, or a transport key its member did not sign for this
        run (for example the server's own key).
    PrivacyError
        A member listed twice.
    """
    names = [name for name, _, _ in enrolled]
    if len(set(names)) != len(names):
        raise PrivacyError(f"enrolment lists a member twice: {sorted(names)}")
    for name, transport, signature in enrolled:
        if not isinstance(transport, bytes) or len(transport) != 32:
            raise SignatureError(f"transport key of {name!r} is not 32 bytes")
        roster.verify(name, signature, ENROLL, run_id, name, transport)


def decrypt_contributions(key: KeyState, policy: AuthorityPolicy, roster: Roster,
                          contributions: Sequence[Contribution], *, run_id: int,
                          server_round: int, length: int,
                          source: RandomSource | None = None) -> tuple[np.ndarray, Flooding]:
    """Verify, add, decrypt and flood: the only way a value leaves the key holder.

    ``key`` is updated (one more decryption, ``last_round``) once the sum is decrypted;
    a refusal before that changes nothing. Nothing unflooded is ever returned.

    Raises
    ------
    PrivacyError
        The key has served ``rotation_rounds`` decryptions (rotate it); a round not
        later than the last decrypted one (replay); too few or repeated members.
    SignatureError
        A contribution that is not a roster member's, for this run, key and round.
    PayloadError
        Malformed or incompatible ciphertexts, another length or scale, or a sum beyond
        the value bound (a member sent out-of-range values).
    """
    if key.decryptions >= policy.rotation_rounds:
        raise PrivacyError(f"this CKKS key has served {key.decryptions} decryptions, the "
                           f"node's limit (key-rotation-rounds = {policy.rotation_rounds}); "
                           "a fresh key is required")
    if isinstance(server_round, bool) or not isinstance(server_round, int) \
            or server_round <= key.last_round:
        raise PrivacyError(f"round {server_round!r} is not later than the last decrypted "
                           f"round {key.last_round}: each round is decrypted once")
    verify_contributions(roster, contributions, run_id=run_id, key=key.fingerprint,
                         server_round=server_round, min_terms=policy.min_terms)
    terms = len(contributions)
    total = sum_frames(key.secret_context, [c.ciphertext for c in contributions],
                       scale=2.0 ** key.config.global_scale_bits)
    raw = decrypt_sum(key.secret_context, total, length, min_terms=terms)
    # From here on the round is spent, refused or not: a retry of it with another set
    # of contributions would let the refusal itself tell two sums apart.
    key.decryptions += 1
    key.last_round = server_round
    fl = flooding_for(key.config, terms=terms, values=length,
                      rotation_rounds=policy.rotation_rounds,
                      security_bits=policy.flooding_bits, max_abs=policy.max_abs)
    bound = terms * policy.max_abs + fl.noise_bound
    largest = float(np.max(np.abs(raw)))
    if largest > bound * (1 + 1e-9):
        raise PayloadError(f"the sum of {terms} contributions reaches {largest:.3g}, beyond "
                           f"{terms} x max_abs {policy.max_abs:g}: a member sent values out "
                           "of range; nothing released")
    return flood(raw, fl.sigma, source), fl
