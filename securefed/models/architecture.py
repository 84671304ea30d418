"""Where the tunable parts of each supported Transformer family live.

Tuning methods need to know, for a given Hugging Face ``model_type``, which ``nn.Linear``
modules are attention projections, which form the feed-forward block, and which module
is the task head. This table is that knowledge in one place; methods never hard-code
module names. Names are *suffixes* matched against ``model.named_modules()`` with a
leading ``.`` boundary (``"attention.self.query"`` matches
``bert.encoder.layer.3.attention.self.query``).

The families follow FedTune (arXiv 2211.08025), which tunes ViT and CLIP, and the
text encoders (BERT, RoBERTa) used by FeDeRA (arXiv 2404.18848) and SA-FedLoRA
(arXiv 2405.09394).
"""

from __future__ import annotations

from dataclasses import dataclass

from securefed.registry import Registry

__all__ = ["ARCHITECTURES", "Architecture", "get_architecture"]


@dataclass(frozen=True)
class Architecture:
    """Module-name layout of one Transformer family.

    Attributes
    ----------
    model_type : str
        The Hugging Face ``config.model_type`` this entry describes.
    modality : str
        ``"text"`` or ``"image"``.
    query, key, value : str
        Suffix of the attention query / key / value projections.
    attention_out : str
        Suffix of the attention output projection.
    ffn_in, ffn_out : str
        Suffixes of the two feed-forward projections (up, down).
    layer : str
        Suffix pattern of one Transformer block; the block index replaces ``{i}``.
    embeddings : str
        Name of the embeddings module (relative to the top model).
    head : tuple[str, ...]
        Names of the task-head modules (relative to the top model). They are
        trained by every method except ``full``'s embeddings freeze rules.
    lora_targets : tuple[str, ...]
        Default leaf names for LoRA-family methods (query and value, as in
        LoRA, arXiv 2106.09685, and FeDeRA).
    """

    model_type: str
    modality: str
    query: str
    key: str
    value: str
    attention_out: str
    ffn_in: str
    ffn_out: str
    layer: str
    embeddings: str
    head: tuple[str, ...]
    lora_targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.modality not in ("text", "image"):
            raise ValueError(f"modality must be 'text' or 'image', got {self.modality!r}")
        if not self.head:
            raise ValueError("head must name at least one module")

    @property
    def leaf(self) -> dict[str, str]:
        """Last path component of each projection, as PEFT ``target_modules`` wants."""
        return {
            "query": self.query.rsplit(".", 1)[-1],
            "key": self.key.rsplit(".", 1)[-1],
            "value": self.value.rsplit(".", 1)[-1],
            "attention_out": self.attention_out,
            "ffn_in": self.ffn_in,
            "ffn_out": self.ffn_out,
        }


ARCHITECTURES: Registry[Architecture] = Registry("architecture (model_type)")

_BERT_LIKE = dict(
    modality="text",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    lora_targets=("query", "value"),
)

ARCHITECTURES.register(
    "bert",
    Architecture(
        model_type="bert",
        layer="bert.encoder.layer.{i}",
        embeddings="bert.embeddings",
        head=("classifier",),
        **_BERT_LIKE,  # type: ignore[arg-type]
    ),
)
ARCHITECTURES.register(
    "roberta",
    Architecture(
        model_type="roberta",
        layer="roberta.encoder.layer.{i}",
        embeddings="roberta.embeddings",
        head=("classifier",),
        **_BERT_LIKE,  # type: ignore[arg-type]
    ),
)

_VIT_LIKE = dict(
    modality="image",
    query="attention.q_proj",
    key="attention.k_proj",
    value="attention.v_proj",
    attention_out="attention.o_proj",
    ffn_in="mlp.fc1",
    ffn_out="mlp.fc2",
    lora_targets=("q_proj", "v_proj"),
    head=("classifier",),
)

ARCHITECTURES.register(
    "vit",
    Architecture(
        model_type="vit",
        layer="vit.layers.{i}",
        embeddings="vit.embeddings",
        **_VIT_LIKE,  # type: ignore[arg-type]
    ),
)
ARCHITECTURES.register(
    "dinov2",
    Architecture(
        model_type="dinov2",
        layer="dinov2.encoder.layer.{i}",
        embeddings="dinov2.embeddings",
        **_VIT_LIKE,  # type: ignore[arg-type]
    ),
)
ARCHITECTURES.register(
    "clip",
    Architecture(
        model_type="clip",
        modality="image",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attention_out="self_attn.out_proj",
        ffn_in="mlp.fc1",
        ffn_out="mlp.fc2",
        layer="vision_model.encoder.layers.{i}",
        embeddings="vision_model.embeddings",
        head=("classifier",),
        lora_targets=("q_proj", "v_proj"),
    ),
)


def get_architecture(model_type: str) -> Architecture:
    """Return the layout for ``model_type``; unknown types list the supported ones."""
    return ARCHITECTURES.get(model_type)
