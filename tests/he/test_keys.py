"""CKKSConfig validation, key roles and the server/decryptor context guards."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from securefed.exceptions import ConfigError, PayloadError, PrivacyError, UnknownNameError
from securefed.he import (
    KEY_ROLES,
    CKKSConfig,
    add_ciphertexts,
    decryptor_context,
    encrypt_vector,
    load_context,
    server_context,
)


def test_defaults_and_slot_count():
    cfg = CKKSConfig()
    assert (cfg.poly_modulus_degree, cfg.coeff_mod_bit_sizes, cfg.global_scale_bits,
            cfg.key_role) == (8192, (60, 40, 60), 84, "authority")
    assert cfg.slot_count == 4096
    assert not cfg.weaker


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        CKKSConfig().key_role = "shared"  # type: ignore[misc]


def test_unknown_role_lists_roles():
    with pytest.raises(UnknownNameError) as err:
        CKKSConfig(key_role="everyone")
    assert isinstance(err.value, ConfigError)
    assert "authority" in str(err.value) and "shared" in str(err.value)
    assert KEY_ROLES.names() == ["authority", "shared"]


@pytest.mark.parametrize("kw", [
    {"poly_modulus_degree": 5000},
    {"poly_modulus_degree": True},
    {"coeff_mod_bit_sizes": (60,)},
    {"coeff_mod_bit_sizes": (61, 40, 60)},
    {"coeff_mod_bit_sizes": (60, 60, 60, 60)},  # 240 bits > 218 at n=8192
    {"coeff_mod_bit_sizes": (40, 60), "global_scale_bits": 40},  # scale == data bits
    {"global_scale_bits": 0},
])
def test_invalid_configs(kw):
    with pytest.raises(ConfigError):
        CKKSConfig(**kw)


def test_from_dict():
    cfg = CKKSConfig.from_dict({"coeff_mod_bit_sizes": [60, 40], "global_scale_bits": 50,
                                "key_role": "shared"})
    assert cfg.coeff_mod_bit_sizes == (60, 40) and cfg.key_role == "shared"
    with pytest.raises(ConfigError, match="unknown CKKS config keys"):
        CKKSConfig.from_dict({"galois": True})


def test_server_context_has_no_secret_key(authority_keys):
    ctx = server_context(authority_keys.public_context)
    assert not ctx.has_secret_key() and ctx.is_public() and not ctx.is_private()
    assert not ctx.has_galois_keys() and not ctx.has_relin_keys()
    # under authority, clients get exactly the public context
    assert authority_keys.client_context == authority_keys.public_context
    assert not load_context(authority_keys.client_context).has_secret_key()
    # the public context cannot decrypt
    vec = ts.ckks_vector(ctx, [1.0, 2.0])
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()


def test_server_refuses_secret_context(authority_keys):
    with pytest.raises(PrivacyError):
        server_context(authority_keys.secret_context)
    with pytest.raises(PrivacyError):
        server_context(load_context(authority_keys.secret_context))
    ct = encrypt_vector(authority_keys.client_context, np.ones(4))
    with pytest.raises(PrivacyError):
        add_ciphertexts(authority_keys.secret_context, [ct, ct])


def test_decryptor_needs_secret_key(authority_keys):
    assert decryptor_context(authority_keys.secret_context).has_secret_key()
    with pytest.raises(ConfigError, match="secret-key"):
        decryptor_context(authority_keys.public_context)


def test_secret_context_has_no_galois_keys(authority_keys):
    ctx = load_context(authority_keys.secret_context)
    assert ctx.has_secret_key() and not ctx.has_galois_keys()


def test_shared_role_is_flagged_weaker(shared_keys):
    cfg = shared_keys.config
    assert cfg.weaker and cfg.role.clients_hold_secret_key
    assert "WEAKER" in cfg.threat_note and "colluding" in cfg.threat_note
    assert load_context(shared_keys.client_context).has_secret_key()
    # the server still gets only the public context
    assert not server_context(shared_keys.public_context).has_secret_key()
    assert "authority" in CKKSConfig().threat_note


def test_key_material_repr_hides_contexts(authority_keys):
    assert "secret_context" not in repr(authority_keys)
    assert len(repr(authority_keys)) < 300


def test_malformed_context_bytes():
    with pytest.raises(PayloadError):
        load_context(b"not a context")
    with pytest.raises(PayloadError):
        server_context(12)
