"""EAGLE head folders: an EAGLE-1 head round-trips through save/load under the published key names,
a published-style pytorch_model.bin (with its own embed_tokens) loads, and an incomplete EAGLE-3 head is
refused naming what it lacks (EAGLE-3 proper: tests/test_eagle3.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from minedraft.assets import default_target_path
from minedraft.drafting.eagle_format import UnsupportedHead, load_head, save_head
from minedraft.train_eagle import new_head

TARGET = default_target_path()


def _probe(head):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, head.cfg.vocab_size, (2, 7), generator=gen)
    feats = torch.randn(2, 7, head.cfg.hidden_size, generator=gen)
    with torch.no_grad():
        return head.forward_dense(tokens, feats)


def _perturbed_head():
    head = new_head(TARGET, seed=3)
    with torch.no_grad():  # not an init value anywhere: the load must really carry every weight
        for p in head.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return head


def test_eagle1_round_trip_keeps_the_published_layout(tmp_path):
    head = _perturbed_head()
    save_head(head, tmp_path / "head", TARGET)
    keys = set(load_file(str(tmp_path / "head" / "model.safetensors")))
    assert {"fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.mlp.down_proj.weight",
            "layers.0.post_attention_layernorm.weight"} <= keys
    assert not any("input_layernorm" in k or "embed_tokens" in k or "lm_head" in k for k in keys)
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == head.cfg.hidden_size
    loaded = load_head(str(tmp_path / "head"), TARGET)
    assert torch.equal(_probe(loaded), _probe(head))


def test_published_bin_with_own_embeddings_loads(tmp_path):
    head = _perturbed_head()
    folder = tmp_path / "bin"
    save_head(head, folder, TARGET)
    state = load_file(str(folder / "model.safetensors"))
    state["embed_tokens.weight"] = torch.zeros(head.cfg.vocab_size, head.cfg.hidden_size)  # ignored: target's
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert torch.equal(_probe(load_head(str(folder), TARGET)), _probe(head))


def test_incomplete_eagle3_layout_is_refused_naming_what_it_lacks(tmp_path):
    """EAGLE-3 heads load (tests/test_eagle3.py); one missing tensors is refused, naming them."""
    head = new_head(TARGET, seed=0)
    save_head(head, tmp_path / "e3", TARGET)
    h, v = head.cfg.hidden_size, head.cfg.vocab_size
    state = {"fc.weight": torch.zeros(h, 3 * h), "midlayer.self_attn.q_proj.weight": torch.zeros(h, 2 * h),
             "midlayer.hidden_norm.weight": torch.ones(h), "norm.weight": torch.ones(h),
             "lm_head.weight": torch.zeros(v // 2, h), "d2t": torch.zeros(v // 2, dtype=torch.long),
             "t2d": torch.zeros(v, dtype=torch.bool).index_fill_(0, torch.arange(v // 2), True)}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "e3" / "model.safetensors"))
    with pytest.raises(UnsupportedHead, match=r"EAGLE-3 head .* lacks midlayer\.input_layernorm\.weight"):
        load_head(str(tmp_path / "e3"), TARGET)


def test_wrong_width_and_non_head_are_refused(tmp_path):
    head = new_head(TARGET, seed=0)
    save_head(head, tmp_path / "h", TARGET)
    from safetensors.torch import save_file

    state = load_file(str(tmp_path / "h" / "model.safetensors"))
    state["fc.weight"] = torch.zeros(head.cfg.hidden_size, 3 * head.cfg.hidden_size)
    save_file(state, str(tmp_path / "h" / "model.safetensors"))
    with pytest.raises(UnsupportedHead, match="fc.weight"):
        load_head(str(tmp_path / "h"), TARGET)
    save_file({"model.norm.weight": torch.ones(4)}, str(tmp_path / "h" / "model.safetensors"))
    with pytest.raises(UnsupportedHead, match="not an EAGLE head"):
        load_head(str(tmp_path / "h"), TARGET)
