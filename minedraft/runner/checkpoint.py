"""Load a Hugging Face checkpoint folder (config.json + *.safetensors, sharded or not) into `Model`."""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import load_file

from minedraft.runner.hf_adapter import ModelConfig, check_checkpoint_folder, load_model_config
from minedraft.runner.model import Model


def load_model(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Model, ModelConfig]:
    folder = check_checkpoint_folder(path)
    cfg = load_model_config(folder)
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    with torch.device("meta"):
        model = Model(cfg)
    expected = set(model.state_dict().keys())
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing = sorted(expected - state.keys())
    if missing:
        raise ValueError(f"model: checkpoint {folder} lacks weights: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
    # The checkpoint's own tensors become the parameters (assign: no second copy of the model while it
    # loads; a bf16 checkpoint run in bf16 on a CPU is not copied at all), converted one at a time.
    loaded = {name: state.pop(name).to(device=device, dtype=dtype) for name in sorted(expected)}
    state.clear()
    model.load_state_dict(loaded, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = _fresh_inv_freq(model, device)
    return model.to(dtype).eval(), cfg


def checkpoint_dtype(path: str) -> str | None:
    """The dtype a checkpoint's config.json declares ("bfloat16", "float32", ...; `torch_dtype` before
    transformers 5), or None when it says none or cannot be read."""
    try:
        raw = json.loads((pathlib.Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = raw.get("dtype") or raw.get("torch_dtype")
    return dtype if isinstance(dtype, str) else None


def _fresh_inv_freq(model: Model, device) -> torch.Tensor:
    # Buffers are not in the checkpoint (the model was built on the meta device): compute them.
    from minedraft.runner.model import rope_inv_freq

    return rope_inv_freq(model.cfg).to(device)
