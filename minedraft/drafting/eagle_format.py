"""EAGLE head folders: config.json (the target's architecture, num_hidden_layers 1) plus the head's
weights (model.safetensors, or pytorch_model.bin as the published heads ship them).

Supported: EAGLE-1 and EAGLE-2 heads (EAGLE-2 changes the draft tree, not the head): keys `fc.weight`
[H, 2H], optional `fc.bias`, `layers.0.*` of a Llama/Qwen decoder layer (no input_layernorm), and
optionally `embed_tokens.weight` (ignored: the target's embeddings are used, as EAGLE does).
A reduced draft vocabulary in EAGLE-3's encoding is supported on such a one-layer head: `d2t` [D]
int offsets (target id = draft index + d2t[index]), optional `t2d` [V] bool mask, the head's own
`lm_head.weight` [D, H], and `draft_vocab_size` D in config.json; without d2t the target's LM head is
used (full vocabulary). The head's intermediate_size may be below the target's.
EAGLE-3 heads (`fc.weight` [H, 3H] over three of the target's layers, `midlayer.*` whose q/k/v read
[2H], `midlayer.hidden_norm`, its own `norm` and `lm_head` [D, H], `d2t`/`t2d`; config.json with
draft_vocab_size, optionally eagle_config.eagle_aux_hidden_state_layer_ids, target_hidden_size,
norm_before_residual, architectures LlamaForCausalLMEagle3) load as drafting/eagle3_head.Eagle3Head;
the layers default to (2, L // 2, L - 3) of an L-layer target. Each tensor's shape is checked and a
mismatch names it. Refused with a clear error: heads of more than one decoder layer, an EAGLE-3 head
whose hidden size differs from its target's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minedraft.drafting.eagle3_head import Eagle3Head, default_aux_layers
from minedraft.drafting.eagle_head import EagleHead
from minedraft.runner.hf_adapter import check_checkpoint_folder, load_model_config, model_config_from_hf
from minedraft.runner.model import check_feature_layers

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
    """An EAGLE-1 head's layout (EAGLE-3's is checked by load_eagle3)."""
    if head_variant(state) == "eagle3":
        return
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


def load_head(head_dir: str, target_dir: str, device: str = "cpu", dtype=torch.float32) -> EagleHead | Eagle3Head:
    """The head of head_dir with the target's embeddings and LM head (only those are kept of it)."""
    folder = Path(head_dir)
    state = read_head_weights(folder)
    if head_variant(state) == "eagle3":
        return load_eagle3(folder, state, target_dir).to(device=device, dtype=dtype).eval()
    cfg = head_config(folder)
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


EAGLE3_OWN = ("fc.", "midlayer.", "norm.", "lm_head.")  # the head's own weights, as published
EAGLE3_EXTRA = ("embed_tokens.weight", "d2t", "t2d")  # read elsewhere (d2t/t2d) or ignored (the target's embeddings)


def eagle3_config(folder: Path) -> tuple[dict, object]:
    """(config.json as a dict, its ModelConfig with a Llama-style midlayer: published EAGLE-3 heads name
    LlamaForCausalLMEagle3, which runs as one Llama decoder layer whatever the target's family)."""
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"draft: {folder} has no config.json (an EAGLE head folder)")
    raw = json.loads((folder / "config.json").read_text())
    hf = AutoConfig.from_pretrained(str(folder))
    hf.architectures = ["LlamaForCausalLM"]
    return raw, model_config_from_hf(hf)


def load_eagle3(folder: Path, state: dict[str, torch.Tensor], target_dir: str) -> Eagle3Head:
    """An EAGLE-3 head (fp32, on the CPU) with the target's embeddings; every tensor's shape checked."""
    raw, cfg = eagle3_config(folder)
    target_cfg = load_model_config(target_dir)
    h = cfg.hidden_size
    if raw.get("target_hidden_size", h) != h or h != target_cfg.hidden_size:
        raise UnsupportedHead(f"draft: hidden_size: the EAGLE-3 head {folder} has {h} (target_hidden_size "
                              f"{raw.get('target_hidden_size', h)}), the target {target_dir} has "
                              f"{target_cfg.hidden_size}: only a head as wide as its target runs here")
    if cfg.vocab_size != target_cfg.vocab_size:
        raise ValueError(f"draft: the head {folder} is for vocab_size {cfg.vocab_size}, but the target {target_dir} "
                         f"has {target_cfg.vocab_size} (a head runs on the target it was trained for)")
    more = sorted(k for k in state if k.startswith("layers."))
    if raw.get("num_hidden_layers", 1) != 1 or more:
        raise UnsupportedHead(f"draft: an EAGLE-3 head with more than one decoder layer is not supported "
                              f"(num_hidden_layers {raw.get('num_hidden_layers', 1)}; {', '.join(more[:3])})")
    eagle = raw.get("eagle_config") or {}
    if eagle.get("use_aux_hidden_state", True) is False:
        raise UnsupportedHead("draft: eagle_config.use_aux_hidden_state: false (a head without fc over three "
                              "target layers) is not supported")
    layers = eagle.get("eagle_aux_hidden_state_layer_ids") or default_aux_layers(target_cfg.num_layers)
    try:
        # ascending, as vLLM collects them (each target layer's entering state, in layer order)
        layers = tuple(sorted(check_feature_layers(layers, target_cfg.num_layers)))
    except ValueError as exc:
        raise UnsupportedHead(f"draft: eagle_aux_hidden_state_layer_ids: {exc} (target {target_dir})") from None
    size = raw.get("draft_vocab_size")
    full = "d2t" not in state and size in (None, cfg.vocab_size) and "t2d" not in state
    ids = None if full else draft_vocab_ids(state, cfg.vocab_size, h, size)
    head = Eagle3Head(cfg, layers, draft_ids=ids, norm_before_residual=bool(raw.get("norm_before_residual", False)),
                      qk_norm="midlayer.self_attn.q_norm.weight" in state, fc_bias="fc.bias" in state)
    want = {k: tuple(v.shape) for k, v in head.own_state_dict().items() if k.startswith(EAGLE3_OWN)}
    embed, lm_head = read_target_ends(target_dir, target_cfg.tie_word_embeddings)
    own = {k: v for k, v in state.items() if k.startswith(EAGLE3_OWN)}
    if ids is None and "lm_head.weight" not in own:  # a full-vocabulary head without its own LM head
        own["lm_head.weight"] = lm_head
    missing = sorted(set(want) - set(own))
    if missing:
        raise UnsupportedHead(f"draft: EAGLE-3 head {folder} lacks {', '.join(missing[:6])}")
    unexpected = sorted(k for k in state if k not in want and k not in EAGLE3_EXTRA)
    if unexpected:
        raise UnsupportedHead(f"draft: EAGLE-3 head {folder} has tensors this layout does not know: "
                              f"{', '.join(unexpected[:6])}")
    for key, shape in want.items():
        if tuple(own[key].shape) != shape:
            raise UnsupportedHead(f"draft: {key}: shape {tuple(own[key].shape)}, an EAGLE-3 head for this target "
                                  f"(hidden {h}, {len(layers)} feature layers, draft vocabulary "
                                  f"{head.draft_vocab_size}) has {shape}")
    own = {k: v.float() for k, v in own.items()}
    own["embed_tokens.weight"] = embed
    own["draft_ids"] = head.draft_ids
    head.load_state_dict(own, strict=True)
    head.config_json = raw  # save_head writes the head's own config back (its rope, eps, sizes)
    return head


def save_head(head: EagleHead | Eagle3Head, folder: str, target_dir: str) -> None:
    """A head folder: the target's config.json with one layer (and the head's own intermediate_size,
    draft_vocab_size; an EAGLE-3 head: the published config's architectures and eagle_config), and the
    head's own weights under the published names (with d2t/t2d if reduced)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    own_config = getattr(head, "config_json", None)
    config = dict(own_config) if own_config else json.loads((Path(target_dir) / "config.json").read_text())
    layers = config.get("num_hidden_layers")
    for key, value in list(config.items()):  # per-layer lists (Qwen's layer_types) keep layer 0's entry
        if isinstance(value, list) and len(value) == layers and key != "architectures":
            config[key] = value[:1]
    config.update(num_hidden_layers=1, architectures=config.get("architectures", ["LlamaForCausalLM"]),
                  intermediate_size=head.cfg.intermediate_size)
    if head.reduced or head.variant == "eagle3":
        config["draft_vocab_size"] = head.draft_vocab_size
    if head.variant == "eagle3":  # the published layout's config (a Llama-style midlayer)
        config.update(architectures=["LlamaForCausalLMEagle3"], model_type="llama",
                      eagle_config={"eagle_aux_hidden_state_layer_ids": list(head.feature_layers),
                                    "use_aux_hidden_state": True},
                      norm_before_residual=head.norm_before_residual)
        config.pop("layer_types", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in head.own_state_dict().items()}, str(out / WEIGHTS),
              metadata={"format": "pt", "eagle": head.variant[-1], "draft_vocab": str(head.draft_vocab_size)})
