"""Keys generated once per module: key generation dominates these tests' time."""

from __future__ import annotations

import pytest

from securefed.he import CKKSConfig, KeyMaterial, generate_keys


@pytest.fixture(scope="session")
def authority_keys() -> KeyMaterial:
    """Default parameters (n=8192, [60, 40], scale 2^50), authority role."""
    return generate_keys(CKKSConfig())


@pytest.fixture(scope="session")
def shared_keys() -> KeyMaterial:
    """Default parameters, shared role (every client holds the secret key)."""
    return generate_keys(CKKSConfig(key_role="shared"))
