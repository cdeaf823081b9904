"""EAGLE head folders: config.json (the target's architecture, num_hidden_layers 1) plus the head's
weights (model.safetensors, or pytorch_model.bin as the published heads ship them).

Supported: EAGLE-1 and EAGLE-2 heads (EAGLE-2 changes the draft tree, not the head): keys `fc.weight`
[H, 2H], optional `fc.bias`, `layers.0.*` of a Llama/Qwen decoder layer (no input_layernorm), and
optionally `embed_tokens.weight` (ignored: the target's embeddings are used, as EAGLE does).
A reduced draft vocabulary in EAGLE-3's encoding is supported on such a one-layer head: `d2t` [D]
int offsets (target id = draft index + d2t[index]), optional `t2d` [V] bool mask, the head's own
`lm_head.weight` [D, H], and `draft_vocab_size` D in config.json; without d2t the target's LM head is
used (full vocabulary). The head's intermediate_size may be below the target's.
Recognised but refused with a clear error: EAGLE-3 proper (`midlayer.*`, fc [H, 3H] over three
target layers, its own `norm`), and heads of more than one layer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minedraft.drafting.eagle_head import EagleHead
from minedraft.runner.hf_adapter import check_checkpoint_folder, load_model_config, model_config_from_hf

WEIGHTS = "model.safetensors"


class UnsupportedHead(ValueError):
    """A head folder in a layout this project does not run (its message says which and why)."""


def head_config(folder: Path):
    """The head's config.json (a published head ships weights as .bin, which load_model_config refuses)."""
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"draft: {folder} has no config.json (an EAGLE head folder)")
    return model_config_from_hf(AutoConfig.from_pretrained(str(folder)))


def read_head_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS).exists():
        return load_file(str(folder / WEIGHTS))
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"draft: {folder} holds no {WEIGHTS} or pytorch_model.bin (an EAGLE head folder)")


def head_variant(state: dict[str, torch.Tensor]) -> str:
    """'eagle1' or 'eagle3', from the key layout alone."""
    if any(k.startswith("midlayer.") for k in state):
        return "eagle3"
    if "fc.weight" in state and any(k.startswith("layers.0.") for k in state):
        return "eagle1"
    raise UnsupportedHead(f"draft: not an EAGLE head (no fc.weight with layers.0.* or midlayer.*); keys: "
                          f"{', '.join(sorted(state)[:6])}")


def check_supported(state: dict[str, torch.Tensor], hidden_size: int) -> None:
    variant = head_variant(state)
    if variant == "eagle3":
        fc = state.get("fc.weight")
        shape = "x".join(map(str, fc.shape)) if fc is not None else "?"
        raise UnsupportedHead(
            f"draft: an EAGLE-3 head (midlayer.*, fc {shape}, d2t/t2d: {'d2t' in state}) is not supported: "
            "only EAGLE-1/EAGLE-2 heads (fc.weight [H, 2H] + layers.0.*) run here; EAGLE-3 needs the target's "
            "states entering three layers, which the target does not export yet")
    if any(k.startswith("layers.1.") for k in state):
        raise UnsupportedHead("draft: an EAGLE head with more than one decoder layer is not supported")
    if tuple(state["fc.weight"].shape) != (hidden_size, 2 * hidden_size):
        raise UnsupportedHead(f"draft: fc.weight is {tuple(state['fc.weight'].shape)}, an EAGLE-1 head for this "
                              f"target has ({hidden_size}, {2 * hidden_size})")


def draft_vocab_ids(state: dict[str, torch.Tensor], vocab_size: int, hidden_size: int,
                    config_size: int | None) -> torch.Tensor | None:
    """The target ids of a head's reduced vocabulary (from d2t, checked against t2d, lm_head and
    config's draft_vocab_size), or None for a full-vocabulary head."""
    if "d2t" not in state:
        if "t2d" in state or config_size is not None:
            raise UnsupportedHead("draft: d2t: missing (the head has t2d or config draft_vocab_size, a reduced "
                                  "vocabulary needs d2t)")
        return None
    d2t = state["d2t"]
    if d2t.dim() != 1 or d2t.is_floating_point() or d2t.dtype == torch.bool or len(d2t) == 0:
        raise UnsupportedHead(f"draft: d2t: must be a non-empty 1-D integer tensor, got {d2t.dtype} "
                              f"{tuple(d2t.shape)}")
    ids = torch.arange(len(d2t)) + d2t.long()
    bad = ((ids < 0) | (ids >= vocab_size)).nonzero()
    if len(bad):
        i = bad[0, 0].item()
        raise UnsupportedHead(f"draft: d2t: maps draft index {i} to target id {ids[i].item()}, outside the "
                              f"target vocabulary [0, {vocab_size}) ({len(bad)} such entries)")
    if len(ids.unique()) != len(ids):
        raise UnsupportedHead("draft: d2t: maps two draft indices to the same target id")
    if config_size is not None and config_size != len(ids):
        raise UnsupportedHead(f"draft: draft_vocab_size: config says {config_size}, d2t has {len(ids)} entries")
    lm = state.get("lm_head.weight")
    if lm is None or tuple(lm.shape) != (len(ids), hidden_size):
        raise UnsupportedHead(f"draft: lm_head.weight: a head with d2t needs its own [{len(ids)}, {hidden_size}] "
                              f"LM head, got {None if lm is None else tuple(lm.shape)}")
    if "t2d" in state:
        t2d = state["t2d"]
        mask = torch.zeros(vocab_size, dtype=torch.bool).index_fill_(0, ids, True)
        if tuple(t2d.shape) != (vocab_size,) or not torch.equal(t2d.bool(), mask):
            raise UnsupportedHead(f"draft: t2d: must be a [{vocab_size}] mask true exactly at d2t's target ids")
    return ids


def read_target_ends(target_dir: str, tied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's embedding and LM head matrices, read alone from its safetensors shards."""
    want = {"model.embed_tokens.weight": None, "lm_head.weight": None}
    for shard in sorted(check_checkpoint_folder(target_dir).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in want:
                if name in f.keys():
                    want[name] = f.get_tensor(name).float()
    embed = want["model.embed_tokens.weight"]
    lm_head = embed if tied or want["lm_head.weight"] is None else want["lm_head.weight"]
    if embed is None or lm_head is None:
        raise ValueError(f"draft: the target {target_dir} lacks model.embed_tokens.weight or lm_head.weight")
    return embed, lm_head


def load_head(head_dir: str, target_dir: str, device: str = "cpu", dtype=torch.float32) -> EagleHead:
    """The head of head_dir with the target's embeddings and LM head (only those are kept of it)."""
    folder = Path(head_dir)
    cfg = head_config(folder)
    state = read_head_weights(folder)
    check_supported(state, cfg.hidden_size)
    target_cfg = load_model_config(target_dir)
    if (target_cfg.hidden_size, target_cfg.vocab_size) != (cfg.hidden_size, cfg.vocab_size):
        raise ValueError(f"draft: the head {folder} is for hidden_size {cfg.hidden_size} / vocab_size "
                         f"{cfg.vocab_size}, but the target {target_dir} has hidden_size {target_cfg.hidden_size} / "
                         f"vocab_size {target_cfg.vocab_size} (a head runs on the target it was trained for)")
    raw = json.loads((folder / "config.json").read_text())
    ids = draft_vocab_ids(state, cfg.vocab_size, cfg.hidden_size, raw.get("draft_vocab_size"))
    head = EagleHead(cfg, fc_bias="fc.bias" in state, draft_ids=ids)
    own = {("layer." + k[len("layers.0."):] if k.startswith("layers.0.") else k): v
           for k, v in state.items() if k.startswith(("fc.", "layers.0."))}
    embed, lm_head = read_target_ends(target_dir, target_cfg.tie_word_embeddings)
    own["embed_tokens.weight"] = embed
    own["lm_head.weight"] = state["lm_head.weight"].float() if ids is not None else lm_head
    own["draft_ids"] = ids if ids is not None else head.draft_ids
    missing, unexpected = head.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise UnsupportedHead(f"draft: head {folder} does not match an EAGLE-1 layer: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    return head.to(device=device, dtype=dtype).eval()


def save_head(head: EagleHead, folder: str, target_dir: str) -> None:
    """An EAGLE-1 head folder: the target's config.json with one layer (and the head's own
    intermediate_size, draft_vocab_size), and the head's own weights (with d2t/t2d if reduced)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(target_dir) / "config.json").read_text())
    layers = config.get("num_hidden_layers")
    for key, value in list(config.items()):  # per-layer lists (Qwen's layer_types) keep layer 0's entry
        if isinstance(value, list) and len(value) == layers and key != "architectures":
            config[key] = value[:1]
    config.update(num_hidden_layers=1, architectures=config.get("architectures", ["LlamaForCausalLM"]),
                  intermediate_size=head.cfg.intermediate_size)
    if head.reduced:
        config["draft_vocab_size"] = head.draft_vocab_size
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in head.own_state_dict().items()}, str(out / WEIGHTS),
              metadata={"format": "pt", "eagle": "1", "draft_vocab": str(head.draft_vocab_size)})
