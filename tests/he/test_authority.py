"""An adversarial server against the CKKS authority's decryption (pure, no Flower).

Every deviation of findings 3 and 4 of issue 10 gets a typed refusal, releases nothing
and leaves the key's state untouched; an honest sum is released flooded, within the
documented error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefed.exceptions import ConfigError, PayloadError, PrivacyError, SignatureError
from securefed.he import (
    AuthorityPolicy,
    CKKSConfig,
    Contribution,
    Frame,
    KeyMaterial,
    KeyState,
    add_ciphertexts,
    context_fingerprint,
    decrypt_contributions,
    encrypt_vector,
    generate_keys,
    pack_frame,
    sign_contribution,
    unpack_frame,
    verify_enrolment,
)
from securefed.he.signed import ENROLL
from securefed.privacy.noise import SeededSource
from securefed.roster import Identity, Roster, generate_roster, load_identity

RUN = 7
L = 64


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> tuple[Roster, dict[str, Identity]]:
    folder: Path = tmp_path_factory.mktemp("roster")
    names = [f"site-{i}" for i in range(4)]
    roster, paths = generate_roster(names, folder)
    return roster, {n: load_identity(paths[n], n, roster) for n in names}


@pytest.fixture
def key(authority_keys: KeyMaterial) -> KeyState:
    return KeyState(epoch=1, config=authority_keys.config,
                    secret_context=authority_keys.secret_context,
                    fingerprint=context_fingerprint(authority_keys.public_context))


POLICY = AuthorityPolicy(authority="site-0", min_terms=3, max_abs=1.0, rotation_rounds=2)


def _updates(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, L) for _ in range(n)]


def _signed(keys: KeyMaterial, ids: dict[str, Identity], xs: list[np.ndarray],
            server_round: int, names: list[str] | None = None) -> list[Contribution]:
    fp = context_fingerprint(keys.public_context)
    names = names or [f"site-{i}" for i in range(len(xs))]
    return [sign_contribution(ids[n], encrypt_vector(keys.client_context, x), run_id=RUN,
                              key=fp, server_round=server_round)
            for n, x in zip(names, xs, strict=True)]


def _decrypt(key, roster, contributions, server_round=1, policy=POLICY):
    return decrypt_contributions(key, policy, roster, contributions, run_id=RUN,
                                 server_round=server_round, length=L,
                                 source=SeededSource(0))


def test_honest_sum_is_released_flooded_within_the_documented_bound(authority_keys, members,
                                                                    key):
    roster, ids = members
    xs = _updates(3)
    values, fl = _decrypt(key, roster, _signed(authority_keys, ids, xs, 1))
    err = np.abs(values - np.sum(xs, axis=0))
    assert np.max(err) <= fl.error_bound
    assert np.max(err) > 10 * fl.noise_bound  # the flooding, not the raw noise, is seen
    assert (key.decryptions, key.last_round) == (1, 1)


def _assert_refused(key, roster, contributions, exc, match, server_round=1):
    before = dataclasses.replace(key)
    with pytest.raises(exc, match=match):
        _decrypt(key, roster, contributions, server_round)
    assert key == before  # nothing spent, nothing released


def test_one_clients_ciphertext_as_a_sum_is_refused(authority_keys, members, key):
    roster, ids = members
    (one,) = _signed(authority_keys, ids, _updates(1), 1)
    _assert_refused(key, roster, [one], PrivacyError, "fewer than this node's min_terms=3")


def test_a_rewritten_count_is_refused(authority_keys, members, key):
    """The server relabels one client's frame as a sum of 3, or passes off the pre-added
    sum of two as one member's: the digest no longer matches the signature."""
    roster, ids = members
    a, b, c = _signed(authority_keys, ids, _updates(3), 1)
    frame = unpack_frame(a.ciphertext)
    inflated = pack_frame(Frame(terms=3, values=frame.values, chunks=frame.chunks))
    _assert_refused(key, roster, [dataclasses.replace(a, ciphertext=inflated), b, c],
                    SignatureError, "does not verify")
    pair = add_ciphertexts(authority_keys.public_context, [a.ciphertext, b.ciphertext])
    _assert_refused(key, roster, [dataclasses.replace(a, ciphertext=pair), b, c],
                    SignatureError, "does not verify")


def test_a_server_made_encryption_of_zero_is_refused(authority_keys, members, key):
    roster, ids = members
    a, b, c = _signed(authority_keys, ids, _updates(3), 1)
    zero = encrypt_vector(authority_keys.public_context, np.zeros(L))
    # added into a client's ciphertext, signed by nobody, or "signed" by the server
    into = add_ciphertexts(authority_keys.public_context, [a.ciphertext, zero])
    _assert_refused(key, roster, [dataclasses.replace(a, ciphertext=into), b, c],
                    SignatureError, "does not verify")
    server = Identity("site-9", Ed25519PrivateKey.generate())
    forged = sign_contribution(server, zero, run_id=RUN, key=key.fingerprint, server_round=1)
    _assert_refused(key, roster, [a, b, forged], SignatureError, "not in the roster")
    as_member = Contribution("site-2", zero, forged.signature)
    _assert_refused(key, roster, [a, b, as_member], SignatureError, "does not verify")
    _assert_refused(key, roster, [a, b, Contribution("site-2", zero, b"\0" * 64)],
                    SignatureError, "does not verify")
    _assert_refused(key, roster, [a, b, Contribution("site-2", zero, b"short")],
                    SignatureError, "not 64 bytes")


def test_one_member_twice_is_refused(authority_keys, members, key):
    roster, ids = members
    a, b, _ = _signed(authority_keys, ids, _updates(3), 1)
    _assert_refused(key, roster, [a, b, a], PrivacyError, "more than once")
    again = _signed(authority_keys, ids, _updates(1, seed=5), 1, names=["site-0"])[0]
    _assert_refused(key, roster, [a, b, again], PrivacyError, "more than once")


def test_a_replay_from_another_round_or_key_is_refused(authority_keys, members, key):
    roster, ids = members
    old = _signed(authority_keys, ids, _updates(3), 1)
    _decrypt(key, roster, old, 1)
    # the same round again (a second, different sum of round 1) is refused
    fresh = _signed(authority_keys, ids, _updates(3, seed=1), 1)
    _assert_refused(key, roster, fresh, PrivacyError, "not later", server_round=1)
    # round 1's ciphertexts presented as round 2's
    _assert_refused(key, roster, old, SignatureError, "does not verify", server_round=2)
    # contributions signed under another key (an earlier epoch)
    other = generate_keys(CKKSConfig())
    _assert_refused(key, roster, _signed(other, ids, _updates(3), 2), SignatureError,
                    "does not verify", server_round=2)


def test_a_non_member_is_refused(authority_keys, members, key):
    roster, ids = members
    a, b = _signed(authority_keys, ids, _updates(2), 1)
    outsider = Identity("site-0", Ed25519PrivateKey.generate())  # a member's name, not key
    c = sign_contribution(outsider, encrypt_vector(authority_keys.client_context, np.ones(L)),
                          run_id=RUN, key=key.fingerprint, server_round=1)
    _assert_refused(key, roster, [b, c, a], PrivacyError, "more than once")
    c2 = dataclasses.replace(c, name="site-3")
    _assert_refused(key, roster, [a, b, c2], SignatureError, "does not verify")


def test_out_of_range_sum_spends_the_round_and_releases_nothing(authority_keys, members,
                                                               key):
    roster, ids = members
    xs = [*_updates(2), np.full(L, 50.0)]  # one member far beyond max_abs
    with pytest.raises(PayloadError, match="beyond"):
        _decrypt(key, roster, _signed(authority_keys, ids, xs, 1))
    assert key.last_round == 1  # no second try at round 1


def test_keys_serve_at_most_rotation_rounds_decryptions(authority_keys, members, key):
    roster, ids = members
    for r in (1, 2):
        _decrypt(key, roster, _signed(authority_keys, ids, _updates(3, r), r), r)
    _assert_refused(key, roster, _signed(authority_keys, ids, _updates(3), 3),
                    PrivacyError, "fresh key is required", server_round=3)


def test_key_state_round_trips(key):
    assert KeyState.from_fields(key.to_fields()) == key


def test_enrolment_needs_members_signatures(members):
    roster, ids = members
    own = Ed25519PrivateKey.generate().public_key().public_bytes_raw()  # any 32 bytes
    good = ids["site-1"].sign(ENROLL, RUN, "site-1", own)
    verify_enrolment(roster, [("site-1", own, good)], run_id=RUN)
    server_key = b"\x01" * 32
    with pytest.raises(SignatureError):  # the server's own transport key
        verify_enrolment(roster, [("site-1", server_key, good)], run_id=RUN)
    with pytest.raises(SignatureError):  # another run's enrolment replayed
        verify_enrolment(roster, [("site-1", own, good)], run_id=RUN + 1)
    with pytest.raises(SignatureError, match="not in the roster"):
        verify_enrolment(roster, [("server", own, good)], run_id=RUN)
    with pytest.raises(PrivacyError, match="twice"):
        verify_enrolment(roster, [("site-1", own, good)] * 2, run_id=RUN)


def test_policy_comes_from_node_config_and_has_floors():
    p = AuthorityPolicy.from_node_config(POLICY.to_node_config())
    assert p == POLICY
    with pytest.raises(ConfigError, match="own config"):
        AuthorityPolicy.from_node_config({"partition-id": 0})
    for bad in ({"min_terms": 1}, {"flooding_bits": 39}, {"rotation_rounds": 0},
                {"max_abs": float("inf")}, {"key_role": "everyone"}):
        with pytest.raises(ConfigError):
            dataclasses.replace(POLICY, **bad)
