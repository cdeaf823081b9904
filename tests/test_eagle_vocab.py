"""A reduced draft vocabulary (EAGLE-3's d2t/t2d) on a one-layer EAGLE head: the folder round-trips
under EAGLE-3's names and encoding (d2t offsets, t2d mask, the head's own lm_head), bad maps are
refused naming the field, drafted ids and q land on the target's vocabulary, and greedy SD/PSD with
such a head equals target-only, with the bundled target and with a random one (mostly rejections)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from minedraft import Engine, SamplingParams
from minedraft.assets import default_eagle_path, default_target_path, load_heldout_prompts
from minedraft.drafting.eagle_format import UnsupportedHead, load_head, save_head
from minedraft.runner.hf_adapter import greedy_generate, save_random_model
from minedraft.train_eagle import new_head, with_draft_vocab
from tests.model_factory import family_config

TARGET = default_target_path()
MAX_TOKENS = 24


def _reduced_head(target_dir, draft_ids, seed=3, scale=0.05):
    head = new_head(target_dir, seed, draft_ids)
    with torch.no_grad():  # not an init value anywhere: the load must really carry every weight
        for p in head.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)
    return head


def _probe(head):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, head.cfg.vocab_size, (2, 7), generator=gen)
    feats = torch.randn(2, 7, head.cfg.hidden_size, generator=gen)
    with torch.no_grad():
        return head.lm_head(head.forward_dense(tokens, feats))


def _ids(vocab, every=3):
    return torch.arange(1, vocab, every)  # never id 0: d2t's offsets are not all zero


def test_reduced_vocab_round_trip(tmp_path):
    ids = _ids(4096)
    head = _reduced_head(TARGET, ids)
    save_head(head, tmp_path / "h", TARGET)
    state = load_file(str(tmp_path / "h" / "model.safetensors"))
    assert state["lm_head.weight"].shape == (len(ids), head.cfg.hidden_size)
    assert torch.equal(torch.arange(len(ids)) + state["d2t"], ids)  # EAGLE-3's offsets
    assert state["t2d"].dtype == torch.bool and state["t2d"].sum() == len(ids) and state["t2d"][ids].all()
    assert json.loads((tmp_path / "h" / "config.json").read_text())["draft_vocab_size"] == len(ids)
    loaded = load_head(str(tmp_path / "h"), TARGET)
    assert loaded.reduced and torch.equal(loaded.draft_ids, ids)
    assert torch.equal(_probe(loaded), _probe(head))
    # the maps: drafted indices -> target ids, q spread with zeros outside the draft vocabulary
    q = torch.softmax(torch.randn(3, len(ids)), -1)
    full = loaded.full_q(q)
    assert full.shape == (3, 4096) and torch.allclose(full.sum(-1), torch.ones(3))
    assert torch.equal(full[:, ids], q) and full[:, 0].eq(0).all()
    assert torch.equal(loaded.to_target(torch.tensor([0, 5])), ids[[0, 5]])


def test_full_vocab_head_has_no_map(tmp_path):
    save_head(new_head(TARGET, 0), tmp_path / "h", TARGET)  # an EAGLE-1 folder: no d2t, the target's LM head
    head = load_head(str(tmp_path / "h"), TARGET)
    assert not head.reduced and head.lm_head.out_features == head.cfg.vocab_size
    assert "draft_vocab_size" not in json.loads((tmp_path / "h" / "config.json").read_text())


@pytest.mark.parametrize("field,edit", [
    ("d2t", lambda s, v: s.update(d2t=s["d2t"] + v)),  # every target id past the vocabulary
    ("d2t", lambda s, v: s.update(d2t=torch.zeros(len(s["d2t"]), dtype=torch.float32))),
    ("d2t", lambda s, v: s.update(d2t=torch.zeros_like(s["d2t"]) - torch.arange(len(s["d2t"])))),  # all -> 0
    ("t2d", lambda s, v: s.update(t2d=~s["t2d"])),
    ("lm_head.weight", lambda s, v: s.update({"lm_head.weight": s["lm_head.weight"][:-1]})),
    ("d2t", lambda s, v: s.pop("d2t")),
])
def test_bad_maps_are_refused_by_name(tmp_path, field, edit):
    head = _reduced_head(TARGET, _ids(4096))
    save_head(head, tmp_path / "h", TARGET)
    state = load_file(str(tmp_path / "h" / "model.safetensors"))
    edit(state, head.cfg.vocab_size)
    save_file(state, str(tmp_path / "h" / "model.safetensors"))
    with pytest.raises(UnsupportedHead, match=field):
        load_head(str(tmp_path / "h"), TARGET)


def test_d2t_outside_the_vocab_names_the_index(tmp_path):
    head = _reduced_head(TARGET, _ids(4096))
    save_head(head, tmp_path / "h", TARGET)
    state = load_file(str(tmp_path / "h" / "model.safetensors"))
    state["d2t"][7] = 5000
    save_file(state, str(tmp_path / "h" / "model.safetensors"))
    with pytest.raises(UnsupportedHead, match=r"d2t: maps draft index 7 to target id 5007, outside the target "
                                              r"vocabulary \[0, 4096\)"):
        load_head(str(tmp_path / "h"), TARGET)


@pytest.fixture(scope="module")
def bundled_expected():
    prompts = load_heldout_prompts(6)
    with Engine(mode="ar", max_num_seqs=8) as engine:
        return prompts, [r.token_ids for r in engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))]


@pytest.mark.parametrize("mode,k", [("sd", 3), ("psd", 4)])
def test_reduced_head_on_bundled_target_greedy_equals_target_only(tmp_path_factory, bundled_expected, mode, k):
    folder = tmp_path_factory.mktemp("red")
    # the bundled head's layer under a vocabulary of every other id: many target tokens undraftable
    save_head(with_draft_vocab(load_head(default_eagle_path(), TARGET), TARGET, torch.arange(0, 4096, 2)),
              folder, TARGET)
    prompts, expected = bundled_expected
    with Engine(draft=str(folder), draft_method="eagle", mode=mode, num_speculative_tokens=k,
                max_num_seqs=8) as engine:
        results = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))
    assert [r.token_ids for r in results] == expected
    drafted, accepted = sum(r.num_drafted for r in results), sum(r.num_accepted for r in results)
    print(f"reduced-vocab eagle {mode} k={k}: accepted {accepted}/{drafted}")
    assert 0.2 * drafted < accepted < drafted  # drafts mapped to target ids (unmapped indices: ~0 accepted)


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_random_reduced_head_greedy_equals_target_only(tmp_path, mode):
    target_dir = tmp_path / "target"
    ref = save_random_model(family_config("llama"), target_dir, seed=1)
    save_head(_reduced_head(str(target_dir), torch.arange(0, 101, 2)), tmp_path / "head", str(target_dir))
    prompts = [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(1 + 5 * i)] for i in range(5)]
    expected = [greedy_generate(ref, p, MAX_TOKENS) for p in prompts]
    with Engine(str(target_dir), str(tmp_path / "head"), draft_method="eagle", mode=mode,
                num_speculative_tokens=3, max_num_seqs=4) as engine:
        results = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    assert [r.token_ids for r in results] == expected
    assert sum(r.num_drafted for r in results) > 0
    assert any(t % 2 for r in results for t in r.token_ids)  # the target emitted ids the head cannot draft
