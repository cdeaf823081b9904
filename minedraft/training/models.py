"""The bundled pair's models: their shapes, construction, and the checkpoint folders they are saved as."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minedraft.training.data import SPECIAL_TOKENS

TARGET_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                    num_attention_heads=8, num_key_value_heads=4)
DRAFT_SHAPE = dict(hidden_size=160, intermediate_size=432, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2)


def make_model(shape: dict, tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=ids[0],
        eos_token_id=ids[1],
        pad_token_id=ids[2],
        **shape,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings are counted once


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(model, fast_tok, folder: Path) -> None:
    """Hugging Face folder with bf16 weights (half the bytes) whose config asks for float32.

    The models were trained in float32 and the runner computes in float32 on CPU; recording
    ``dtype: float32`` makes ``from_pretrained(folder)`` upcast the bf16 tensors instead of
    computing in bf16, so every loader sees the same numbers by default.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    model.to(torch.float32)
    (folder / "model.safetensors").chmod(0o644)  # written 0600; the package must be world-readable
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    fast_tok.save_pretrained(folder)
    # transformers 5 writes its own "TokenizersBackend" class name; the generic fast class also
    # loads under transformers 4.x (pyproject allows >= 4.45).
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.pop("backend", None)
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    special = folder / "special_tokens_map.json"
    if not special.exists():  # newer transformers fold this into tokenizer_config.json
        bos, eos, pad = SPECIAL_TOKENS
        special.write_text(json.dumps({"bos_token": bos, "eos_token": eos, "pad_token": pad}, indent=2) + "\n")


# The gateway's /v1/chat/completions renders messages with this. The pair knows only Python source,
# so the conversation is laid out as comments, which it continues with code.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
                 "# {{ m['role'] }}: {{ m['content'] | replace('\\n', '\\n# ') }}\n"
                 "{% endfor %}{% if add_generation_prompt %}# assistant:\n{% endif %}")


def load_checkpoint(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
