"""Signed CKKS messages: what each party signs, and how the others check it.

The aggregation server relays every CKKS message, so nothing it relays is trusted
unsigned. Signatures are Ed25519 (RFC 8032) under the roster identities of
:mod:`securefed.roster`, over :func:`securefed.roster.signing_message` with one domain
per purpose, so no signature made for one purpose, run, key or round verifies for
another (``docs/threat-model.md``):

``ENROLL``          ``(run, name, transport key)``: a member asks the authority for the
                    secret key (``shared`` role); the authority wraps it only for
                    transport keys signed by roster members.
``PUBLIC_CONTEXT``  ``(run, epoch, SHA-256 of the public context, key role, authority
                    transport key)``: clients encrypt only under a public context signed
                    by the authority named in their own node config, never one the
                    server made.
``CONTRIBUTION``    ``(run, key fingerprint, round, name, SHA-256 of the ciphertext)``:
                    the authority decrypts only a sum it computed itself from at least
                    ``min_terms`` such contributions of distinct members.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from securefed.exceptions import PrivacyError, SignatureError
from securefed.roster import Identity, Roster

__all__ = [
    "CONTRIBUTION",
    "ENROLL",
    "PUBLIC_CONTEXT",
    "Contribution",
    "context_fingerprint",
    "sign_contribution",
    "verify_contributions",
]

ENROLL = "securefed/ckks/enroll"
PUBLIC_CONTEXT = "securefed/ckks/public-context"
CONTRIBUTION = "securefed/ckks/contribution"


def context_fingerprint(context: bytes) -> str:
    """SHA-256 hex digest naming a serialised public context (one key epoch)."""
    return hashlib.sha256(context).hexdigest()


@dataclass(frozen=True)
class Contribution:
    """One client's encrypted update as the authority receives it.

    Attributes
    ----------
    name : str
        The roster name the client signed as.
    ciphertext : bytes
        Its framed CKKS ciphertext (:func:`securefed.he.encrypt_vector`).
    signature : bytes
        Ed25519 signature over :data:`CONTRIBUTION` fields.
    """

    name: str
    ciphertext: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def _fields(run_id: int, key: str, server_round: int, name: str,
            ciphertext: bytes) -> tuple[int, str, int, str, bytes]:
    return run_id, key, server_round, name, hashlib.sha256(ciphertext).digest()


def sign_contribution(identity: Identity, ciphertext: bytes, *, run_id: int, key: str,
                      server_round: int) -> Contribution:
    """Sign ``ciphertext`` as ``identity`` for one run, key epoch and round."""
    signature = identity.sign(CONTRIBUTION,
                              *_fields(run_id, key, server_round, identity.name, ciphertext))
    return Contribution(identity.name, ciphertext, signature)


def verify_contributions(roster: Roster, contributions: Sequence[Contribution], *,
                         run_id: int, key: str, server_round: int,
                         min_terms: int) -> None:
    """Check that ``contributions`` come from at least ``min_terms`` distinct members.

    Parameters
    ----------
    roster : Roster
        The verifier's own roster (its node config), never one the server sent.
    contributions : sequence of Contribution
        What the server forwarded for decryption.
    run_id, key, server_round : int, str, int
        The run, the key fingerprint of the verifier's current key, and the round.
    min_terms : int
        The verifier's own floor.

    Raises
    ------
    PrivacyError
        Fewer than ``min_terms`` contributions, or one member twice.
    SignatureError
        A name outside the roster, or a signature that does not verify for this run,
        key, round and ciphertext (a server-made ciphertext, a replay from another round
        or key, a forged or rewritten one).
    """
    names = [c.name for c in contributions]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise PrivacyError(f"contributions name {twice} more than once; each member "
                           "counts once in a sum")
    if len(names) < min_terms:
        raise PrivacyError(f"{len(names)} signed contribution(s), fewer than this node's "
                           f"min_terms={min_terms}: refusing to decrypt a non-aggregate")
    for c in contributions:
        if not isinstance(c.ciphertext, bytes):
            raise SignatureError(f"the contribution of {c.name!r} carries no ciphertext")
        roster.verify(c.name, c.signature, CONTRIBUTION,
                      *_fields(run_id, key, server_round, c.name, c.ciphertext))
