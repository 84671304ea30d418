"""CKKS parameters and key roles: who holds the secret key, and who never does.

CKKS (Cheon, Kim, Kim and Song 2017, "Homomorphic Encryption for Arithmetic of
Approximate Numbers", ASIACRYPT) encrypts vectors of reals so that ciphertexts can be
added without decrypting them. We use the implementation of TenSEAL (Benaissa et al.
2021, arXiv:2104.03152, on Microsoft SEAL). Aggregation needs only addition, so no
Galois keys (rotations) and no relinearisation keys (multiplication) are ever exported:
a context without them, and without the secret key, is enough to add.

Key roles (the registry :data:`KEY_ROLES`; chosen by ``CKKSConfig.key_role``):

``authority``
    A designated key holder creates the context with the secret key and exports only a
    *public* context (public key, no secret key, no Galois or relin keys) to clients and
    server. Clients encrypt with it; the server adds with it and provably cannot
    decrypt (:func:`server_context` asserts it); only the authority decrypts, and only
    the aggregate. Not protected against: the authority colluding with the server.
``shared``
    Every client holds the secret-key context (NVFlare's model); the server still gets
    only the public context. *Weaker*: any one client colluding with the server reads
    every other client's update. Documented, not hidden (see ``docs/threat-model.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts

from securefed.exceptions import ConfigError, PayloadError, PrivacyError
from securefed.registry import Registry

__all__ = [
    "KEY_ROLES",
    "MAX_COEFF_MODULUS_BITS",
    "CKKSConfig",
    "KeyMaterial",
    "KeyRole",
    "decryptor_context",
    "export_public_context",
    "generate_keys",
    "load_context",
    "server_context",
]

#: Largest total coefficient-modulus bit count for 128-bit security, per polynomial
#: modulus degree (HomomorphicEncryption.org standard; the table SEAL enforces).
MAX_COEFF_MODULUS_BITS: dict[int, int] = {
    1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881,
}


@dataclass(frozen=True)
class KeyRole:
    """Who holds the CKKS secret key.

    Attributes
    ----------
    name : str
        Registry name (``"authority"``, ``"shared"``).
    clients_hold_secret_key : bool
        Whether every client receives the secret-key context.
    weaker : bool
        Whether this role protects less than ``authority`` does.
    threat_note : str
        What the role protects against and what it does not (``docs/threat-model.md``).
    """

    name: str
    clients_hold_secret_key: bool
    weaker: bool
    threat_note: str


#: Key roles by name. Look up with ``KEY_ROLES.get(name)``; an unknown name raises
#: :class:`~securefed.exceptions.UnknownNameError` listing the roles.
KEY_ROLES: Registry[KeyRole] = Registry("CKKS key role")
KEY_ROLES.register("authority", KeyRole(
    name="authority", clients_hold_secret_key=False, weaker=False,
    threat_note=("a designated key authority holds the only secret key; clients encrypt "
                 "and the server adds with a public context and cannot decrypt; protects "
                 "against the aggregation server seeing updates, not against the authority "
                 "colluding with the server"),
))
KEY_ROLES.register("shared", KeyRole(
    name="shared", clients_hold_secret_key=True, weaker=True,
    threat_note=("WEAKER: every client holds the secret key (NVFlare's model); protects "
                 "against an outside observer only: any single client colluding with the "
                 "server decrypts every other client's update"),
))


@dataclass(frozen=True)
class CKKSConfig:
    """CKKS encryption parameters and key role, validated when built.

    Parameters
    ----------
    poly_modulus_degree : int
        Ring degree ``N`` (a power of two, 1024 to 32768); one ciphertext holds
        ``N / 2`` values (:attr:`slot_count`).
    coeff_mod_bit_sizes : tuple of int
        Bit sizes of the coefficient-modulus primes (each 1 to 60, at least two; the
        last one is SEAL's special prime, the others hold the data). Their sum must not
        exceed :data:`MAX_COEFF_MODULUS_BITS` for ``N`` (128-bit security).
    global_scale_bits : int
        CKKS scale ``2**global_scale_bits``; precision is roughly ``noise / scale``.
        Must be below the data primes' total bits, leaving room for the sum.
    key_role : str
        A name in :data:`KEY_ROLES`: ``"authority"`` (default) or ``"shared"``.

    Raises
    ------
    ConfigError
        For an invalid value; :class:`~securefed.exceptions.UnknownNameError` (a
        ``ConfigError``) for an unknown ``key_role``, listing the valid roles.

    Notes
    -----
    Addition never rescales; the scale is set by noise flooding
    (:mod:`securefed.he.flooding`): every decryption adds Gaussian noise of width
    ``2**(lambda/2) sqrt(R L) n B_fresh / 2**scale`` (Li and Micciancio 2021), so a 40-bit
    flooding over ``R = 10`` rounds of ``L = 1e5`` values from ``n = 10`` clients needs a
    scale near ``2**84`` for an error around 1e-10: two data primes. The default
    ``(60, 40, 60)`` (data primes 60 and 40, special prime 60) at ``N = 8192`` and scale
    ``2**84`` holds aggregates up to ``|value| < 2**15`` (:attr:`max_abs_aggregate`) and
    costs about 14× the float32 bytes; the former single-prime ``(60, 40)`` at ``2**50``
    cost 8× but its flooded error would be about 2**-2 (see ``bench/he.py``).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    global_scale_bits: int = 84
    key_role: str = "authority"
    role: KeyRole = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if isinstance(n, bool) or not isinstance(n, int) or n not in MAX_COEFF_MODULUS_BITS:
            raise ConfigError(f"poly_modulus_degree must be one of "
                              f"{sorted(MAX_COEFF_MODULUS_BITS)}, got {n!r}")
        bits = tuple(self.coeff_mod_bit_sizes)
        if len(bits) < 2 or not all(
                isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 60 for b in bits):
            raise ConfigError(f"coeff_mod_bit_sizes needs at least two integers in 1..60, "
                              f"got {self.coeff_mod_bit_sizes!r}")
        if sum(bits) > MAX_COEFF_MODULUS_BITS[n]:
            raise ConfigError(f"coeff_mod_bit_sizes sum to {sum(bits)} bits; at most "
                              f"{MAX_COEFF_MODULUS_BITS[n]} for 128-bit security at "
                              f"poly_modulus_degree={n}")
        s = self.global_scale_bits
        data_bits = sum(bits[:-1])
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s < data_bits:
            raise ConfigError(f"global_scale_bits must be an integer in 1..{data_bits - 1} "
                              f"(below the data primes' {data_bits} bits), got {s!r}")
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        object.__setattr__(self, "role", KEY_ROLES.get(self.key_role))

    @property
    def slot_count(self) -> int:
        """Values per ciphertext: ``poly_modulus_degree // 2``."""
        return self.poly_modulus_degree // 2

    @property
    def max_abs_aggregate(self) -> float:
        """Largest ``|value|`` an aggregate may reach: ``2**(data bits - scale bits - 1)``.

        Sufficient, and tight for a constant vector: no coefficient of the encoded
        polynomial exceeds the largest slot magnitude (times the scale), so a sum whose
        values all stay below this bound decodes correctly. Beyond it the sum wraps
        around the data modulus and decrypts to garbage, which CKKS cannot detect. With
        ``n`` clients sending ``|x| <= b``, keep ``n * b`` below it: 2^15 for the default
        ``(60, 40, 60)`` at scale 2^84, 2^19 for ``(60, 40)`` at 2^40, 2^9 for ``(50, 40)``
        at 2^40.
        """
        return 2.0 ** (sum(self.coeff_mod_bit_sizes[:-1]) - self.global_scale_bits - 1)

    @property
    def threat_note(self) -> str:
        """What this config's key role protects against, and what it does not."""
        return self.role.threat_note

    @property
    def weaker(self) -> bool:
        """True for a key role weaker than ``authority`` (``shared``)."""
        return self.role.weaker

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CKKSConfig:
        """Build from a mapping (e.g. a TOML table); unknown keys are a ConfigError."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown CKKS config keys {sorted(unknown)}; "
                              f"valid: {sorted(names)}")
        kw = dict(d)
        if "coeff_mod_bit_sizes" in kw:
            kw["coeff_mod_bit_sizes"] = tuple(kw["coeff_mod_bit_sizes"])
        return cls(**kw)


@dataclass(frozen=True)
class KeyMaterial:
    """Serialised contexts produced by the key holder (:func:`generate_keys`).

    Attributes
    ----------
    config : CKKSConfig
        The parameters and key role.
    public_context : bytes
        Public key only (no secret, Galois or relin keys): for the server, and for the
        clients under ``authority``.
    client_context : bytes
        What each client receives: ``public_context`` under ``authority``; the
        secret-key context under ``shared``.
    secret_context : bytes
        The secret-key context (no Galois or relin keys). Stays with the authority
        (or, under ``shared``, with every client). Never give it to the server.
    """

    config: CKKSConfig
    public_context: bytes = field(repr=False)
    client_context: bytes = field(repr=False)
    secret_context: bytes = field(repr=False)


def _new_context(config: CKKSConfig) -> Any:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, config.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(config.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** config.global_scale_bits
    return ctx


def export_public_context(ctx: Any) -> bytes:
    """Serialise ``ctx`` without its secret key, Galois keys or relinearisation keys.

    Parameters
    ----------
    ctx : tenseal.Context
        Any CKKS context (usually the authority's secret one).

    Returns
    -------
    bytes
        A context that can encrypt and add, never decrypt.
    """
    return bytes(ctx.serialize(save_public_key=True, save_secret_key=False,
                               save_galois_keys=False, save_relin_keys=False))


def generate_keys(config: CKKSConfig | None = None) -> KeyMaterial:
    """Create a fresh CKKS key pair (run by the key holder) and its serialised contexts.

    Parameters
    ----------
    config : CKKSConfig, optional
        Parameters and key role; default ``CKKSConfig()`` (``authority``).

    Returns
    -------
    KeyMaterial
        Public, client and secret contexts; the public one holds no secret key
        (checked here, :class:`~securefed.exceptions.PrivacyError` otherwise).
    """
    config = config or CKKSConfig()
    ctx = _new_context(config)
    public = export_public_context(ctx)
    server_context(public)  # asserts that the export holds no secret key
    secret = bytes(ctx.serialize(save_public_key=True, save_secret_key=True,
                                 save_galois_keys=False, save_relin_keys=False))
    client = secret if config.role.clients_hold_secret_key else public
    return KeyMaterial(config=config, public_context=public, client_context=client,
                       secret_context=secret)


def load_context(ctx: Any) -> Any:
    """A ``tenseal.Context`` from serialised bytes (or the context itself).

    Raises
    ------
    PayloadError
        If the bytes are not a serialised CKKS context.
    """
    if isinstance(ctx, bytes | bytearray | memoryview):
        try:
            ctx = ts.context_from(bytes(ctx))
        except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on bad streams
            raise PayloadError(f"malformed CKKS context bytes: {exc}") from None
    if not isinstance(ctx, ts.Context):
        raise PayloadError(f"expected a tenseal.Context or its bytes, got {type(ctx).__name__}")
    return ctx


def server_context(ctx: Any) -> Any:
    """The aggregation server's context: load it and assert it holds no secret key.

    Parameters
    ----------
    ctx : bytes or tenseal.Context
        The public context exported by the key holder.

    Returns
    -------
    tenseal.Context
        A public context (``has_secret_key()`` is false, ``is_public()`` is true).

    Raises
    ------
    PrivacyError
        If the context holds a secret key: the server must never be able to decrypt.
    PayloadError
        If the bytes are not a CKKS context.
    """
    ctx = load_context(ctx)
    if ctx.has_secret_key() or ctx.is_private() or not ctx.is_public():
        raise PrivacyError("the aggregation server was handed a CKKS context holding the "
                           "secret key; give it the public context "
                           "(KeyMaterial.public_context) only")
    return ctx


def decryptor_context(ctx: Any) -> Any:
    """The decryptor's context: load it and require the secret key.

    Raises
    ------
    ConfigError
        If the context holds no secret key (only the key holder can decrypt).
    PayloadError
        If the bytes are not a CKKS context.
    """
    ctx = load_context(ctx)
    if not ctx.has_secret_key():
        raise ConfigError("decryption needs the key holder's secret-key context; this "
                          "context is public (it can encrypt and add only)")
    return ctx
