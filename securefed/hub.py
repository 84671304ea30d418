"""Is the Hugging Face hub usable from here? One answer for models and datasets.

securefed keeps the hub path for its users (model ids such as ``roberta-base``, dataset
ids such as ``glue/sst2``), while its tests, demo and benchmarks run offline. Both the
backbone and the dataset registries ask these two questions before touching the hub, so
that an offline machine fails in seconds with a clear message instead of retrying.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

__all__ = ["HUB_PROBE_TIMEOUT", "hub_disabled", "hub_reachable"]

#: Seconds the TCP probe of the hub endpoint waits.
HUB_PROBE_TIMEOUT = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_disabled(variables: tuple[str, ...] = _OFFLINE_VARS) -> bool:
    """Whether an offline switch (``HF_HUB_OFFLINE`` and friends) is set to a true value."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in variables)


def hub_reachable() -> bool:
    """Quick TCP probe of the hub endpoint.

    Without it, ``huggingface_hub`` and ``datasets`` retry with back-off for about 25 s
    before failing. When a proxy is configured the probe cannot tell, so the hub is
    assumed reachable.
    """
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_TIMEOUT):
            return True
    except OSError:
        return False
