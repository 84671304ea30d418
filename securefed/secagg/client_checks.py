"""The checks a SecAgg+ client runs on what the server sends it, before it reveals anything.

A client of :class:`~securefed.secagg.client.SecAggClient` never trusts the server's
messages. Before each stage it refuses (Bonawitz et al. 2017, CCS, Sec. 6: clients
abort when the server deviates; Bell et al. 2020, arXiv:2009.05807, malicious variant):

- a message addressed to another client (:func:`check_receiver`);
- a key broadcast that lists the client itself, malformed or repeated keys, fewer than
  ``t`` or more than ``k`` neighbours (:func:`check_neighbours`); in malicious mode a
  members map that is malformed, longer than ``n`` or names a member twice, and any
  neighbour whose keys lack a valid roster signature (:func:`check_signed_neighbours`);
- an unmask request that breaks the consistency rule (a neighbour both surviving and
  dropped), names a peer whose shares it does not hold, leaves fewer than ``t``
  survivors of its neighbourhood, or, in malicious mode, lacks ``T`` valid signatures
  on the client's survivor set ``U3`` or asks for other shares than that set implies
  (:func:`check_unmask_request`).

Semi-honest mode requires the malicious-mode fields to be empty
(:func:`check_unsigned`), so a server cannot mix the two protocols. The signatures
themselves are made and verified by :class:`~securefed.secagg.auth.Authenticator`; see
``docs/threat-model.md``.
"""

from __future__ import annotations

from collections.abc import Mapping

from securefed.secagg.auth import Authenticator, members_digest
from securefed.secagg.crypto import PUBLIC_KEY_BYTES
from securefed.secagg.errors import FloorError, ProtocolError
from securefed.secagg.messages import KeysBroadcast, SecAggConfig, UnmaskRequest

__all__ = [
    "check_neighbours",
    "check_receiver",
    "check_signed_neighbours",
    "check_unmask_request",
    "check_unsigned",
    "is_client_id",
]

_MAX_ID = 2**64 - 1


def is_client_id(value: object) -> bool:
    """A client id as it travels: an int (not a bool) in ``[1, 2**64 - 1]``."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_ID


def check_receiver(message: object, kind: type, client_id: int) -> None:
    """Refuse (:class:`ProtocolError`) a message not of ``kind`` or not for ``client_id``."""
    receiver = getattr(message, "receiver", None)
    if not isinstance(message, kind) or not is_client_id(receiver) or receiver != client_id:
        raise ProtocolError(f"expected the {kind.__name__} for client {client_id}")


def check_unsigned(message: object, *names: str) -> None:
    """Semi-honest mode: the malicious-mode fields ``names`` must be empty dicts.

    Raises
    ------
    ProtocolError
        If one of them is not an empty dict.
    """
    for name in names:
        value = getattr(message, name, None)
        if not isinstance(value, dict) or value:
            raise ProtocolError(f"{type(message).__name__}.{name} must be empty in "
                                "semi-honest mode")


def check_neighbours(
    broadcast: KeysBroadcast, config: SecAggConfig, own_keys: tuple[bytes, bytes],
    client_id: int,
) -> dict[int, tuple[bytes, bytes]]:
    """Validate the neighbours' keys of a (receiver-checked) :class:`KeysBroadcast`.

    Parameters
    ----------
    broadcast : KeysBroadcast
        The broadcast the server sent this client.
    config : SecAggConfig
        The round's config (``t`` and ``k``).
    own_keys : tuple of bytes
        This client's two public keys, which no neighbour may repeat.
    client_id : int
        This client's id, which must not be among its neighbours.

    Returns
    -------
    dict
        ``{neighbour id: (c public key, s public key)}``.

    Raises
    ------
    ProtocolError
        If the broadcast lists this client, holds malformed keys, repeats a key, or
        names more than ``k`` neighbours.
    FloorError
        If it names fewer than ``t`` neighbours: too few to hold a ``t``-of-``k``
        sharing of this client's secrets.
    """
    if not isinstance(broadcast.neighbours, dict):
        raise ProtocolError("the KeysBroadcast neighbours must be a dict")
    neighbours = dict(broadcast.neighbours)
    t = config.graph.threshold
    if client_id in neighbours:
        raise ProtocolError("a client is not its own neighbour")
    if len(neighbours) < t:
        raise FloorError(f"{len(neighbours)} neighbours cannot hold a {t}-of-k sharing")
    if len(neighbours) > config.graph.degree:
        raise ProtocolError(f"{len(neighbours)} neighbours; the round's degree is "
                            f"k = {config.graph.degree}")
    seen = set(own_keys)
    for peer, keys in neighbours.items():
        if not is_client_id(peer) or not isinstance(keys, tuple) or len(keys) != 2:
            raise ProtocolError(f"malformed neighbour entry {peer!r}")
        for key in keys:
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES or key in seen:
                raise ProtocolError(f"malformed or repeated public key of client {peer}")
            seen.add(key)
    return neighbours


def check_signed_neighbours(auth: Authenticator, config: SecAggConfig, client_id: int,
                            broadcast: KeysBroadcast,
                            neighbours: Mapping[int, tuple[bytes, bytes]]) -> dict[int, str]:
    """Malicious mode: validate the members map and every neighbour's signed keys.

    Returns
    -------
    dict
        The members map ``U1`` as ``{client id: roster name}``.

    Raises
    ------
    ProtocolError
        If the members map is malformed, longer than ``n``, names a member twice or
        lacks this client or a neighbour, or the signatures are not a dict.
    SignatureError
        If a name is not a roster member, or a neighbour's signature is missing or does
        not verify under the roster key of the name the members map gives it, for this
        run, round, id and config (substituted keys, Sybils, non-members, replays).
    """
    members = auth.check_members(config, client_id, broadcast.members)
    signatures = broadcast.signatures
    if not isinstance(signatures, dict):
        raise ProtocolError("the KeysBroadcast signatures must be a dict")
    for peer in sorted(neighbours):
        name = members.get(peer)
        if name is None:
            raise ProtocolError(f"neighbour {peer} is not in the members map")
        c_public, s_public = neighbours[peer]
        auth.verify_keys(config, peer, name, signatures.get(peer), c_public, s_public)
    return members


def check_unmask_request(
    request: UnmaskRequest, config: SecAggConfig, held: Mapping[int, object],
    auth: Authenticator | None, members: Mapping[int, str], u3: frozenset[int],
) -> tuple[set[int], set[int]]:
    """Validate a (receiver-checked) :class:`UnmaskRequest` before any share is revealed.

    Parameters
    ----------
    request : UnmaskRequest
        The request the server sent this client.
    config : SecAggConfig
        The round's config (``n``, ``t``).
    held : mapping
        The neighbours whose shares this client holds (keys are their ids).
    auth : Authenticator or None
        This node's identity and roster (malicious mode) or ``None`` (semi-honest).
    members, u3
        (malicious mode) The members map and the survivor set ``U3`` this client
        signed in the consistency round.

    Returns
    -------
    tuple of set of int
        The survivors (whose self-mask shares are revealed) and the dropped neighbours
        (whose key shares are revealed).

    Raises
    ------
    ProtocolError
        If a peer is both surviving and dropped (the consistency rule), a peer is not
        a neighbour whose shares this client holds, or the id sets are malformed; in
        malicious mode, if the request differs from what the signed ``U3`` implies,
        and in semi-honest mode, if it carries signatures.
    FloorError
        If fewer than ``t`` clients of its neighbourhood (this client included)
        survived.
    SignatureError
        (malicious mode) If fewer than ``T`` members validly signed ``U3``.
    """
    for name in ("survivors", "dropped"):
        ids = getattr(request, name)
        if not isinstance(ids, set | frozenset) or not all(is_client_id(p) for p in ids):
            raise ProtocolError(f"the UnmaskRequest {name} must be a set of client ids")
    survivors, dropped = set(request.survivors), set(request.dropped)
    both = survivors & dropped
    if both:
        raise ProtocolError(
            f"consistency rule: refusing to reveal both the self-mask and the pairwise-key "
            f"share of {sorted(both)}"
        )
    unknown = (survivors | dropped) - set(held)
    if unknown:
        raise ProtocolError(
            f"asked for shares of {sorted(unknown, key=repr)}, which are not neighbours "
            "whose shares this client holds"
        )
    t = config.graph.threshold
    if len(survivors) + 1 < t:
        raise FloorError(f"only {len(survivors)} surviving neighbours (and this client); "
                         f"unmasking needs at least t = {t}")
    if auth is None:
        check_unsigned(request, "signatures")
        return survivors, dropped
    auth.check_consistency(config, members, members_digest(members), u3, request.signatures)
    held_ids = set(held)
    if survivors != held_ids & u3 or dropped != held_ids - u3:
        raise ProtocolError(
            "the unmask request is not what the signed survivor set implies: "
            f"survivors {sorted(survivors)} (expected {sorted(held_ids & u3)}), "
            f"dropped {sorted(dropped)} (expected {sorted(held_ids - u3)})")
    return survivors, dropped
