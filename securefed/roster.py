"""Long-term signing identities and the roster that names them, out of the server's reach.

Against a server that deviates from the protocol, every message a client trusts must be
signed by a party the client knows *without asking the server*: Bonawitz et al. 2017
(CCS, "Practical Secure Aggregation", Sec. 6, the active-adversary variant) and Bell et
al. 2020 (arXiv:2009.05807, SecAgg+, the malicious variant) assume a PKI that gives
every client the verification keys of the others. Here that PKI is a **roster**: a small
file, handed to each node by the deployment (``flower-supernode --node-config``), that
maps member names to Ed25519 verification keys (Bernstein et al. 2012, RFC 8032). Each
node also holds its own **identity**: its name and its Ed25519 signing key. The server
never supplies either; a node that is told a key by the server checks it against the
roster.

Signatures are over :func:`signing_message`, an unambiguous, domain-separated encoding
of the fields a message binds (for example run, round, node id and public keys), so a
signature made for one purpose, round or run never verifies for another.

Files
-----
roster (JSON)::

    {"format": "securefed-roster/v1",
     "members": {"site-a": "<64 hex chars: raw Ed25519 public key>", ...}}

identity (PEM, PKCS#8 Ed25519 private key, mode 0600); the member name is given beside
it (node config ``securefed-name``), and :func:`load_identity` checks that the key is
the roster's key for that name.

Node config keys (:data:`NODE_CONFIG_KEYS`): ``securefed-roster`` (roster path),
``securefed-identity`` (identity path), ``securefed-name`` (member name).

See ``docs/threat-model.md`` for what the roster defends against.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from securefed.exceptions import ConfigError, SignatureError

__all__ = [
    "NODE_CONFIG_IDENTITY",
    "NODE_CONFIG_KEYS",
    "NODE_CONFIG_NAME",
    "NODE_CONFIG_ROSTER",
    "ROSTER_FORMAT",
    "SIGNATURE_BYTES",
    "VERIFY_KEY_BYTES",
    "Identity",
    "Roster",
    "generate_roster",
    "identity_from_node_config",
    "load_identity",
    "signing_message",
]

ROSTER_FORMAT = "securefed-roster/v1"
SIGNATURE_BYTES = 64
VERIFY_KEY_BYTES = 32
NODE_CONFIG_ROSTER = "securefed-roster"
NODE_CONFIG_IDENTITY = "securefed-identity"
NODE_CONFIG_NAME = "securefed-name"
NODE_CONFIG_KEYS = (NODE_CONFIG_ROSTER, NODE_CONFIG_IDENTITY, NODE_CONFIG_NAME)

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PREFIX = b"securefed/signature/v1\x00"
_TAGS: dict[type, bytes] = {bytes: b"b", str: b"s", int: b"i"}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"roster member name must be 1-64 characters of letters, digits, '.', '_' "
            f"or '-', got {name!r}"
        )
    return name


def signing_message(domain: str, *fields: bytes | str | int) -> bytes:
    """The exact bytes a signature covers: a prefix, the domain, then typed fields.

    Every field is tagged with its type and prefixed by its 8-byte length, so two
    different field lists never encode to the same bytes (no ambiguity between, say,
    ``("ab", "c")`` and ``("a", "bc")``), and the domain separates purposes.

    Parameters
    ----------
    domain : str
        What is signed, e.g. ``"secagg/advertise-keys"``.
    *fields : bytes, str or int
        The values the signature binds; ints must be non-negative and below ``2**256``.

    Raises
    ------
    ConfigError
        For a field of another type, or an int out of range.
    """
    out = bytearray(_PREFIX)
    for value in (domain, *fields):
        if isinstance(value, bool) or type(value) not in _TAGS:
            raise ConfigError(f"cannot sign a field of type {type(value).__name__}")
        if isinstance(value, int):
            if not 0 <= value < 2**256:
                raise ConfigError(f"signed int out of range: {value}")
            raw = value.to_bytes(32, "big")
        elif isinstance(value, str):
            raw = value.encode("utf-8")
        else:
            raw = bytes(value)
        out += _TAGS[type(value)] + len(raw).to_bytes(8, "big") + raw
    return bytes(out)


@dataclass(frozen=True)
class Identity:
    """A node's roster name and its Ed25519 signing key (never leaves the node).

    Parameters
    ----------
    name : str
        The node's name in the roster.
    private_key : Ed25519PrivateKey
        Its long-term signing key.
    """

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.private_key, Ed25519PrivateKey):
            raise ConfigError("private_key must be an Ed25519PrivateKey")

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte verification key."""
        return self.private_key.public_key().public_bytes_raw()

    def sign(self, domain: str, *fields: bytes | str | int) -> bytes:
        """Sign :func:`signing_message` ``(domain, *fields)``; 64 bytes."""
        return self.private_key.sign(signing_message(domain, *fields))

    def save(self, path: str | Path) -> Path:
        """Write the signing key as unencrypted PKCS#8 PEM, readable by the owner only."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return out


@dataclass(frozen=True)
class Roster:
    """Member name -> raw Ed25519 verification key; the trust anchor of a deployment.

    Parameters
    ----------
    members : mapping of str to bytes
        At least one member; every key 32 bytes, and no key listed twice.

    Raises
    ------
    ConfigError
        For an invalid name or key, or a key shared by two members.
    """

    members: Mapping[str, bytes]
    _verifiers: Mapping[str, Ed25519PublicKey] = field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        members = {}
        for name, key in dict(self.members).items():
            _check_name(name)
            if not isinstance(key, bytes) or len(key) != VERIFY_KEY_BYTES:
                raise ConfigError(f"roster key of {name!r} must be {VERIFY_KEY_BYTES} bytes")
            members[name] = key
        if not members:
            raise ConfigError("a roster needs at least one member")
        if len(set(members.values())) != len(members):
            raise ConfigError("two roster members share one verification key")
        object.__setattr__(self, "members", MappingProxyType(dict(sorted(members.items()))))
        object.__setattr__(self, "_verifiers", MappingProxyType(
            {n: Ed25519PublicKey.from_public_bytes(k) for n, k in members.items()}))

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __len__(self) -> int:
        return len(self.members)

    @property
    def names(self) -> tuple[str, ...]:
        """Member names, sorted."""
        return tuple(self.members)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical roster: nodes compare it to agree on one roster."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def verify(self, name: str, signature: object, domain: str,
               *fields: bytes | str | int) -> None:
        """Check that ``name``, a member, signed ``(domain, *fields)``.

        Raises
        ------
        SignatureError
            If ``name`` is not a member, the signature is not 64 bytes, or it does not
            verify under the member's key.
        """
        key = self._verifiers.get(name) if isinstance(name, str) else None
        if key is None:
            raise SignatureError(f"{name!r} is not in the roster; members: {list(self.names)}")
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            raise SignatureError(f"signature of {name!r} is not {SIGNATURE_BYTES} bytes")
        try:
            key.verify(signature, signing_message(domain, *fields))
        except InvalidSignature:
            raise SignatureError(
                f"signature of {name!r} on {domain!r} does not verify under its roster key"
            ) from None

    def to_json(self) -> str:
        """The canonical JSON text of the roster."""
        body = {"format": ROSTER_FORMAT,
                "members": {n: k.hex() for n, k in self.members.items()}}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def save(self, path: str | Path) -> Path:
        """Write the roster (public: verification keys only)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.to_json() + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        """Read a roster file.

        Raises
        ------
        ConfigError
            If the file is missing, not JSON, of another format, or holds a bad entry.
        """
        try:
            body: Any = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read roster {str(path)!r}: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != ROSTER_FORMAT:
            raise ConfigError(f"roster {str(path)!r} is not a {ROSTER_FORMAT!r} file")
        members = body.get("members")
        if not isinstance(members, dict):
            raise ConfigError(f"roster {str(path)!r} lacks a 'members' object")
        try:
            parsed = {str(n): bytes.fromhex(k) for n, k in members.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"roster {str(path)!r} has a key that is not hex") from None
        return cls(parsed)


def load_identity(path: str | Path, name: str, roster: Roster) -> Identity:
    """Read a node's signing key and check it is the roster's key for ``name``.

    Raises
    ------
    ConfigError
        If the file is unreadable or not an Ed25519 PEM key, ``name`` is not in the
        roster, or the key is not the one the roster lists for ``name``.
    """
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read identity {str(path)!r}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity {str(path)!r} is not an Ed25519 private key")
    identity = Identity(_check_name(name), key)
    if name not in roster:
        raise ConfigError(f"{name!r} is not in the roster; members: {list(roster.names)}")
    if roster.members[name] != identity.public_bytes:
        raise ConfigError(f"identity {str(path)!r} is not the roster's key for {name!r}")
    return identity


def generate_roster(names: Iterable[str], directory: str | Path) -> tuple[Roster, dict[str, Path]]:
    """Make a fresh identity per name and the roster of them all, under ``directory``.

    Writes ``roster.json`` and ``identities/<name>.pem`` (mode 0600). Used by
    simulation and in-process runs, which stand in for a deployment's enrolment; a real
    deployment makes each identity on its node and collects only the public keys.

    Returns
    -------
    (Roster, dict)
        The roster, and each name's identity path.
    """
    root = Path(directory)
    identities = {_check_name(n): Identity(n, Ed25519PrivateKey.generate()) for n in names}
    roster = Roster({n: i.public_bytes for n, i in identities.items()})
    roster.save(root / "roster.json")
    paths = {n: i.save(root / "identities" / f"{n}.pem") for n, i in identities.items()}
    return roster, paths


def identity_from_node_config(node_config: Mapping[str, Any]) -> tuple[Identity, Roster] | None:
    """The node's identity and roster from its Flower node config, or ``None`` if unset.

    Raises
    ------
    ConfigError
        If only some of :data:`NODE_CONFIG_KEYS` are set, or a file is invalid.
    """
    present = [k for k in NODE_CONFIG_KEYS if node_config.get(k) not in (None, "")]
    if not present:
        return None
    missing = [k for k in NODE_CONFIG_KEYS if k not in present]
    if missing:
        raise ConfigError(f"node config sets {present} but not {missing}; a roster needs all "
                          f"of {list(NODE_CONFIG_KEYS)}")
    roster = Roster.load(str(node_config[NODE_CONFIG_ROSTER]))
    identity = load_identity(str(node_config[NODE_CONFIG_IDENTITY]),
                             str(node_config[NODE_CONFIG_NAME]), roster)
    return identity, roster
