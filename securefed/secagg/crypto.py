"""Key agreement and authenticated encryption for SecAgg+.

Each client advertises two X25519 public keys (Bonawitz et al. 2017, CCS, "Practical
Secure Aggregation"; Bell et al. 2020, arXiv:2009.05807):

* ``c_u``: agreed with a neighbour ``v`` it gives the key that encrypts the Shamir
  shares ``u`` sends to ``v`` through the server (AES-256-GCM);
* ``s_u``: agreed with ``v`` it gives the seed ``s_uv`` of their pairwise mask.

A raw X25519 shared secret is not a uniform key, so every key goes through
HKDF-SHA256 with a **label** naming its use (``"pairwise-mask"`` or
``"share-encryption"``) and an optional context (e.g. the round), so that one exchange
never yields the same key for two purposes. The derivation is symmetric: ``u`` and ``v``
get the same key from ``(sk_u, pk_v)`` and ``(sk_v, pk_u)``.

Ciphertexts carry associated data binding the sender id, receiver id, round and stage:
a share bundle replayed to another client, another round or another stage fails to
authenticate and raises :class:`~securefed.secagg.errors.DecryptionError`. All
randomness (private keys, nonces) comes from the operating system's CSPRNG; no seed is
accepted.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefed.exceptions import ConfigError
from securefed.secagg.errors import DecryptionError, ProtocolError

__all__ = [
    "KEY_BYTES",
    "KEY_LABELS",
    "NONCE_BYTES",
    "PAIRWISE_MASK_LABEL",
    "PUBLIC_KEY_BYTES",
    "SHARE_ENCRYPTION_LABEL",
    "KeyPair",
    "associated_data",
    "decrypt_bundle",
    "derive_shared_key",
    "encrypt_bundle",
    "generate_keypair",
    "load_public_key",
]

KEY_BYTES = 32
"""Length of every derived key (AES-256 key, ChaCha20 mask seed)."""

PUBLIC_KEY_BYTES = 32
"""Length of a raw X25519 public key."""

NONCE_BYTES = 12
"""AES-GCM nonce length; a fresh random nonce prefixes every ciphertext."""

PAIRWISE_MASK_LABEL = "pairwise-mask"
SHARE_ENCRYPTION_LABEL = "share-encryption"
KEY_TRANSPORT_LABEL = "key-transport"
"""HKDF label of the key that wraps a CKKS secret context sent to a client (``shared``
key role, :mod:`securefed.app.ckks_mod`)."""
KEY_LABELS = (PAIRWISE_MASK_LABEL, SHARE_ENCRYPTION_LABEL, KEY_TRANSPORT_LABEL)
"""The only HKDF labels: one per use of an agreed key."""

_HKDF_PREFIX = b"securefed/secagg/v1/"
_AD_PREFIX = b"securefed/secagg/v1/share-bundle"
_U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; only :attr:`public_bytes` ever leaves the client.

    Parameters
    ----------
    private_key : X25519PrivateKey
        The secret half.
    public_bytes : bytes
        The raw 32-byte public key to advertise.
    """

    private_key: X25519PrivateKey = field(repr=False)
    public_bytes: bytes


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's CSPRNG."""
    private_key = X25519PrivateKey.generate()
    public_bytes = private_key.public_key().public_bytes_raw()
    return KeyPair(private_key=private_key, public_bytes=public_bytes)


def load_public_key(data: bytes) -> X25519PublicKey:
    """Parse a raw 32-byte X25519 public key received from a peer.

    Raises
    ------
    ProtocolError
        If ``data`` is not 32 bytes.
    """
    if not isinstance(data, bytes | bytearray) or len(data) != PUBLIC_KEY_BYTES:
        got = f"{len(data)} bytes" if isinstance(data, bytes | bytearray) else type(data).__name__
        raise ProtocolError(f"an X25519 public key is {PUBLIC_KEY_BYTES} bytes, got {got}")
    return X25519PublicKey.from_public_bytes(bytes(data))


def derive_shared_key(
    private_key: X25519PrivateKey, peer_public: bytes, label: str, *, context: bytes = b""
) -> bytes:
    """ECDH with a peer, then HKDF-SHA256 to a 32-byte key for one use.

    Parameters
    ----------
    private_key : X25519PrivateKey
        Own secret key.
    peer_public : bytes
        The peer's raw 32-byte public key.
    label : {"pairwise-mask", "share-encryption", "key-transport"}
        What the key is for; different labels give independent keys.
    context : bytes, optional
        Extra HKDF info that both sides must agree on (e.g. the round number).

    Returns
    -------
    bytes
        32 bytes, identical on both sides of the exchange (Bonawitz et al. 2017;
        Bell et al. 2020, arXiv:2009.05807).

    Raises
    ------
    ConfigError
        If ``label`` is not one of :data:`KEY_LABELS`.
    ProtocolError
        If the peer key is malformed or of small order (all-zero shared secret).
    """
    if label not in KEY_LABELS:
        raise ConfigError(f"label must be one of {KEY_LABELS}, got {label!r}")
    if not isinstance(context, bytes | bytearray):
        raise ConfigError(f"context must be bytes, got {type(context).__name__}")
    peer = load_public_key(peer_public)
    try:
        shared = private_key.exchange(peer)
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise ProtocolError(f"X25519 key agreement failed: {exc}") from None
    info = _HKDF_PREFIX + label.encode() + b"/" + bytes(context)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _check_u64(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise ConfigError(f"{name} must be an int in [0, 2**64 - 1], got {value!r}")
    return value


def associated_data(*, sender: int, receiver: int, round_id: int, stage: str) -> bytes:
    """The AES-GCM associated data binding a bundle to its sender, receiver, round, stage.

    Raises
    ------
    ConfigError
        If an id or the round is not a uint64, or ``stage`` is empty.
    """
    for name, value in (("sender", sender), ("receiver", receiver), ("round_id", round_id)):
        _check_u64(name, value)
    if not isinstance(stage, str) or not stage:
        raise ConfigError(f"stage must be a non-empty string, got {stage!r}")
    stage_bytes = stage.encode()
    header = struct.pack(">QQQH", sender, receiver, round_id, len(stage_bytes))
    return _AD_PREFIX + header + stage_bytes


def _aes_key(key: bytes) -> AESGCM:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ConfigError(f"key must be {KEY_BYTES} bytes (AES-256)")
    return AESGCM(bytes(key))


def encrypt_bundle(
    key: bytes, plaintext: bytes, *, sender: int, receiver: int, round_id: int, stage: str
) -> bytes:
    """AES-256-GCM encrypt a share bundle for one receiver.

    Returns
    -------
    bytes
        ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; the nonce is random.
    """
    if not isinstance(plaintext, bytes | bytearray):
        raise ConfigError(f"plaintext must be bytes, got {type(plaintext).__name__}")
    ad = associated_data(sender=sender, receiver=receiver, round_id=round_id, stage=stage)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aes_key(key).encrypt(nonce, bytes(plaintext), ad)


def decrypt_bundle(
    key: bytes, ciphertext: bytes, *, sender: int, receiver: int, round_id: int, stage: str
) -> bytes:
    """Verify and decrypt a bundle from :func:`encrypt_bundle`.

    Raises
    ------
    DecryptionError
        If the ciphertext, tag, nonce, key or any associated-data field differs from
        what was encrypted, or the ciphertext is too short.
    """
    if not isinstance(ciphertext, bytes | bytearray) or len(ciphertext) < NONCE_BYTES + 16:
        raise DecryptionError("ciphertext is too short to hold a nonce and a tag")
    ad = associated_data(sender=sender, receiver=receiver, round_id=round_id, stage=stage)
    data = bytes(ciphertext)
    try:
        return _aes_key(key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], ad)
    except InvalidTag:
        raise DecryptionError(
            f"share bundle from {sender} to {receiver} (round {round_id}, stage {stage!r}) "
            "failed authentication"
        ) from None
