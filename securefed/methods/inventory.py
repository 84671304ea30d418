"""What each tuning method trains and sends on a given backbone.

Backs ``securefed methods``: for every registered method, the number of trainable
parameters, the payload a client uploads each round, and its share of full fine-tuning,
plus the declared aggregation semantics and export format.
"""

from __future__ import annotations

from typing import Any

from securefed.methods.registry import METHODS, create_method

__all__ = ["method_inventory"]


def method_inventory(
    backbone_name: str, *, num_labels: int = 5, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per registered method on ``backbone_name`` (default method parameters).

    Returns
    -------
    list of dict
        Keys: ``method``, ``trainable_params``, ``payload_tensors``, ``payload_bytes``,
        ``percent_of_full``, ``aggregation``, ``exact_under_sum``, ``export_format``.
    """
    from securefed.models import build_classifier, resolve_backbone

    backbone = resolve_backbone(backbone_name)
    rows: list[dict[str, Any]] = []
    for name in METHODS.names():
        method = create_method(name)
        model = method.apply(
            build_classifier(backbone, num_labels, seed=seed), backbone.architecture, seed=seed
        )
        payload = method.payload(model)
        rows.append(
            {
                "method": name,
                "trainable_params": int(sum(v.size for v in payload.values())),
                "payload_tensors": len(payload),
                "payload_bytes": int(sum(v.nbytes for v in payload.values())),
                "aggregation": method.semantics.kind.value,
                "exact_under_sum": method.semantics.exact_under_sum,
                "export_format": "peft"
                if method.peft_native(backbone.architecture)
                else "securefed-safetensors",
            }
        )
    full = next((r["payload_bytes"] for r in rows if r["method"] == "full"), None)
    for r in rows:
        r["percent_of_full"] = 100.0 * r["payload_bytes"] / full if full else float("nan")
    return rows
