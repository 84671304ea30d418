"""Training defaults per tuning method and backbone family, each with its source.

``[train] lr = "auto"`` (the default) takes the learning rate from :data:`LR_DEFAULTS`
for the config's ``[method] name`` and the *family* of its ``[model] backbone``:
``"text"`` (a text encoder: BERT, RoBERTa, MiniLM) or ``"image"`` (a vision transformer:
ViT, DINOv2, CLIP's vision tower). The family is the backbone's modality
(:attr:`securefed.models.Backbone.modality`), read without loading any weights.

Every entry names where its number comes from: the paper (and table or section) whose
setting it follows, and, where this project measured it, the run that did. The papers
train centrally for many epochs with warm-up and decay; securefed clients run a few
local AdamW steps at a constant rate per round and train the fresh classification head
at the same rate. LoRA on text encoders therefore uses the quickstart's measured 5e-3
(ten times the LoRA paper's), and image defaults stay at or below 1e-3, where the head
on DINOv2-S features no longer diverges. ``docs/configuration.md`` lists the table with
its sources and the measurements.

New entries are added with :func:`register_default`, never with an ``if`` chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from securefed.exceptions import ConfigError, RegistryError

__all__ = [
    "FAMILIES",
    "LR_DEFAULTS",
    "TrainingDefault",
    "backbone_family",
    "default_for",
    "register_default",
    "resolve_lr",
]

#: Backbone families a default may be given for (the backbone's modality).
FAMILIES = ("text", "image")

#: The family of each offline alias, so that resolving ``lr = "auto"`` needs no I/O for
#: them (resolving ``dinov2-s`` checks a 88 MB checksum). A test checks these against
#: :func:`securefed.models.resolve_backbone`; other names are resolved (a folder's
#: ``config.json``, a hub id's config).
_ALIAS_FAMILY = {"minilm-l6": "text", "dinov2-s": "image"}


@dataclass(frozen=True)
class TrainingDefault:
    """The default training hyper-parameters of one (method, family) pair.

    Attributes
    ----------
    method : str
        A registered tuning method (``securefed.methods.METHODS``).
    family : str
        ``"text"`` or ``"image"``.
    lr : float
        AdamW learning rate (also applied to the classification head).
    source : str
        The published setting this follows: paper, arXiv id, table or section.
    measured : str
        Where securefed measured it (run and result), or ``""`` if it was not.
    """

    method: str
    family: str
    lr: float
    source: str
    measured: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise RegistryError(f"family must be one of {', '.join(FAMILIES)}, "
                                f"got {self.family!r}")
        if not self.lr > 0:
            raise RegistryError(f"default lr for {self.method}/{self.family} must be > 0")
        if not self.source:
            raise RegistryError(f"default for {self.method}/{self.family} needs a source")

    def describe(self) -> str:
        """One line for the resolved config: the pair, the source, the measurement."""
        where = f"; measured: {self.measured}" if self.measured else "; not measured here"
        return f"auto: {self.method} on {self.family} backbones ({self.source}{where})"


class _Defaults:
    """(method, family) -> :class:`TrainingDefault`; a duplicate is a RegistryError."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], TrainingDefault] = {}

    def register(self, entry: TrainingDefault) -> None:
        key = (entry.method, entry.family)
        if key in self._entries:
            raise RegistryError(f"a default for {entry.method}/{entry.family} is registered")
        self._entries[key] = entry

    def get(self, method: str, family: str) -> TrainingDefault:
        try:
            return self._entries[(method, family)]
        except KeyError:
            have = sorted({m for m, f in self._entries if f == family})
            raise ConfigError(
                f"no default learning rate for method {method!r} on {family} backbones "
                f"(defaults exist for: {', '.join(have) or 'none'}); set [train] lr"
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[TrainingDefault]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


LR_DEFAULTS = _Defaults()


def register_default(entry: TrainingDefault) -> None:
    """Register the defaults of one (method, family) pair."""
    LR_DEFAULTS.register(entry)


def default_for(method: str, family: str) -> TrainingDefault:
    """The registered defaults of ``method`` on ``family`` backbones.

    Raises
    ------
    ConfigError
        If none is registered (the message says to set ``[train] lr``).
    """
    return LR_DEFAULTS.get(method, family)


def backbone_family(backbone: str) -> str:
    """``"text"`` or ``"image"`` for a backbone alias, local folder or hub id.

    Aliases are looked up without I/O; a folder's ``config.json`` or a hub id's config
    is read (:func:`securefed.models.resolve_backbone`); no weights are loaded.

    Raises
    ------
    AssetError, OfflineError, ConfigError
        As :func:`securefed.models.resolve_backbone` for names it cannot resolve.
    """
    if backbone in _ALIAS_FAMILY:
        return _ALIAS_FAMILY[backbone]
    from securefed.models import resolve_backbone

    return resolve_backbone(backbone).modality


def resolve_lr(method: str, backbone: str) -> tuple[float, str]:
    """The default learning rate for ``method`` on ``backbone`` and where it comes from."""
    entry = default_for(method, backbone_family(backbone))
    return entry.lr, entry.describe()


# -- the table ------------------------------------------------------------------------
# One line per source; the details (tables, sections, grids) are in docs/configuration.md,
# "Learning-rate defaults", with the measurement commands.
_LORA = "LoRA, Hu et al. 2021, arXiv 2106.09685, Table 9"
_FFA = "FFA-LoRA, arXiv 2403.12313, at LoRA's setting (arXiv 2106.09685, Table 9)"
_FEDERA = "FeDeRA, arXiv 2404.18848, at LoRA's setting (arXiv 2106.09685, Table 9)"
_BITFIT = "BitFit, Ben Zaken et al. 2021, arXiv 2106.10199; FedTune, arXiv 2211.08025"
_HEAD = "linear probe of the frozen encoder"
_PROMPT = ("prompt tuning, Lester et al. 2021, arXiv 2104.08691, §3; "
           "VPT, Jia et al. 2022, arXiv 2203.12119, Appendix A")
_PREFIX = "P-Tuning v2, Liu et al. 2022, arXiv 2110.07602; prefix tuning, arXiv 2101.00190"
_IA3 = "IA3 (T-Few), Liu et al. 2022, arXiv 2205.05638, §3.3"
_ADAPTER = "Houlsby et al. 2019, arXiv 1902.00751, §3.1; FedTune, arXiv 2211.08025"
_FULL = "BERT, Devlin et al. 2019, arXiv 1810.04805, Appendix A.3"

#: Where measured (docs/configuration.md, "Measured here", has the commands).
_DEMO = "quickstart (make demo): 0.965"
_DIGITS = "dinov2-s on digits, 3 rounds: {}"
_BBC = "minilm-l6 on bbc-news, 3 rounds: {}"

for _entry in (
    TrainingDefault("lora", "text", 5e-3, _LORA, _DEMO),
    TrainingDefault("ffa-lora", "text", 5e-3, _FFA),
    TrainingDefault("federa", "text", 5e-3, _FEDERA),
    TrainingDefault("bitfit", "text", 5e-3, _BITFIT, _BBC.format("0.32 -> 0.93")),
    TrainingDefault("head", "text", 5e-3, _HEAD),
    TrainingDefault("prompt", "text", 1e-2, _PROMPT),
    TrainingDefault("prefix", "text", 1e-2, _PREFIX),
    TrainingDefault("ia3", "text", 3e-3, _IA3),
    TrainingDefault("adapter", "text", 1e-3, _ADAPTER),
    TrainingDefault("full", "text", 5e-5, _FULL),
    TrainingDefault("lora", "image", 1e-3, _LORA, _DIGITS.format("0.10 -> 0.62")),
    TrainingDefault("ffa-lora", "image", 1e-3, _FFA, _DIGITS.format("0.10 -> 0.54")),
    TrainingDefault("federa", "image", 1e-3, _FEDERA, _DIGITS.format("0.10 -> 0.69")),
    TrainingDefault("bitfit", "image", 1e-3, _BITFIT, _DIGITS.format("0.10 -> 0.36")),
    TrainingDefault("head", "image", 1e-3, _HEAD, _DIGITS.format("0.10 -> 0.24")),
    TrainingDefault("prompt", "image", 1e-3, _PROMPT, _DIGITS.format("0.10 -> 0.25")),
    TrainingDefault("prefix", "image", 1e-3, _PREFIX, _DIGITS.format("0.10 -> 0.23")),
    TrainingDefault("ia3", "image", 1e-3, _IA3, _DIGITS.format("0.10 -> 0.31")),
    TrainingDefault("adapter", "image", 5e-4, _ADAPTER, _DIGITS.format("0.10 -> 0.55")),
    TrainingDefault("full", "image", 2e-5, _FULL, _DIGITS.format("0.10 -> 0.74")),
):
    register_default(_entry)
