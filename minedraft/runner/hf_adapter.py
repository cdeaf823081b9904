"""The one place that calls into `transformers`.

Its API moves between releases (e.g. `rope_theta`/`rope_scaling` became `rope_parameters` in 5.x,
`past_key_values` is giving way to `cache`), so everything the rest of MineDraft needs from it goes
through the small functions here: read a config, load a tokenizer, build a reference model for tests.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the native runner needs to know about a checkpoint, independent of transformers."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # e.g. {"rope_type": "llama3", "factor": 8.0, ...}
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3 normalises q and k per head before RoPE
    sliding_windows: tuple  # per layer: window length or None
    bos_token_id: int | None
    eos_token_ids: tuple


def check_checkpoint_folder(path: str | os.PathLike) -> Path:
    """Fail early, naming the problem, for a folder that cannot hold a checkpoint."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"model: checkpoint folder {str(folder)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise ValueError(f"model: checkpoint folder {str(folder)!r} has no config.json")
    if not list(folder.glob("*.safetensors")):
        raise ValueError(f"model: checkpoint folder {str(folder)!r} has no *.safetensors weights")
    return folder


def _rope(hf_config) -> tuple[float, dict | None]:
    params = getattr(hf_config, "rope_parameters", None)  # transformers >= 5
    if params:
        params = dict(params)
        theta = float(params.pop("rope_theta", getattr(hf_config, "rope_theta", 10000.0) or 10000.0))
        kind = params.get("rope_type", params.get("type", "default"))
        return theta, (params if kind not in (None, "default") else None)
    theta = float(getattr(hf_config, "rope_theta", 10000.0))  # transformers 4.x
    scaling = getattr(hf_config, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        return theta, dict(scaling)
    return theta, None


def _sliding_windows(hf_config, arch: str, num_layers: int) -> tuple:
    window = getattr(hf_config, "sliding_window", None)
    if arch == "MistralForCausalLM":
        return (window,) * num_layers
    layer_types = getattr(hf_config, "layer_types", None)
    if window and layer_types and getattr(hf_config, "use_sliding_window", False):
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    return (None,) * num_layers


def model_config_from_hf(hf_config) -> ModelConfig:
    archs = list(getattr(hf_config, "architectures", None) or [])
    arch = archs[0] if archs else _arch_from_model_type(getattr(hf_config, "model_type", ""))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"model: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    num_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    theta, scaling = _rope(hf_config)
    eos = hf_config.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    attention_bias = bool(getattr(hf_config, "attention_bias", False))
    is_qwen2 = arch == "Qwen2ForCausalLM"
    return ModelConfig(
        architecture=arch,
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        rms_norm_eps=hf_config.rms_norm_eps,
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=hf_config.max_position_embeddings,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        qkv_bias=True if is_qwen2 else (attention_bias and arch != "MistralForCausalLM"),
        o_bias=False if is_qwen2 else (attention_bias and arch != "MistralForCausalLM"),
        mlp_bias=bool(getattr(hf_config, "mlp_bias", False)) and arch == "LlamaForCausalLM",
        qk_norm=arch == "Qwen3ForCausalLM",
        sliding_windows=_sliding_windows(hf_config, arch, hf_config.num_hidden_layers),
        bos_token_id=hf_config.bos_token_id,
        eos_token_ids=eos_ids,
    )


def _arch_from_model_type(model_type: str) -> str:
    return {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
    }.get(model_type, model_type or "<unknown>")


def load_model_config(path: str | os.PathLike) -> ModelConfig:
    from transformers import AutoConfig

    folder = check_checkpoint_folder(path)
    try:
        hf_config = AutoConfig.from_pretrained(str(folder))
    except ValueError as exc:  # unknown model_type
        raise ValueError(
            f"model: cannot read {folder}/config.json ({exc}); supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        ) from exc
    return model_config_from_hf(hf_config)


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint's tokenizer, or None when the folder ships none (token-id-only use)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    return AutoTokenizer.from_pretrained(str(folder))


def tokenizer_fingerprint(tokenizer) -> tuple:
    """The tokenizer's (token, id) pairs, sorted: what draft and target must agree on
    (minedraft.spec.compat hashes it); () for no tokenizer."""
    if tokenizer is None:
        return ()
    return tuple(sorted(tokenizer.get_vocab().items()))


def reference_model(path: str | os.PathLike, dtype=None):
    """The transformers implementation of a checkpoint: the reference the runner is tested against."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    return model.eval()


def save_random_model(hf_config, folder: str | os.PathLike, seed: int = 0):
    """Build a model with random weights from a transformers config and save it (for tests)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config)
    with torch.no_grad():  # larger-than-default weights give peaked, informative distributions
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    model.save_pretrained(str(folder))
    return model.eval()


def random_model(hf_config, device, dtype, seed: int = 0):
    """transformers' model for a config, random weights, made directly on the device in dtype
    (an 8B model never exists in fp32 or on the host)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_config)
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype).eval()


def new_kv_cache(model):
    """An empty transformers KV cache for `model` (DynamicCache takes the config in newer releases)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def forward_with_cache(module, input_ids, cache):
    """module(input_ids) appending to `cache`: the keyword is `cache` in newer releases,
    `past_key_values` (deprecated there) in older ones."""
    import inspect

    key = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
    return module(input_ids=input_ids, use_cache=True, **{key: cache})


def crop_kv_cache(cache, length: int) -> None:
    """Drop cached positions >= length. A negative argument (tokens to remove) is what every release
    accepts: newer ones refuse a positive one."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def greedy_generate(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Target-only greedy decoding by transformers: the lossless reference."""
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[0, len(prompt_ids):].tolist()
