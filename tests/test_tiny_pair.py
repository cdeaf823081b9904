"""The bundled tiny target/draft pair (minedraft/assets) loads, decodes and agrees (issue 4)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minedraft import assets  # noqa: E402

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    loaded = {}
    for name, path in (("target", assets.default_target_path()), ("draft", assets.default_draft_path())):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        loaded[name] = (model, AutoTokenizer.from_pretrained(path))
    return loaded


def test_asset_paths_exist():
    for path in (assets.default_target_path(), assets.default_draft_path(), assets.heldout_prompts_path()):
        assert os.path.exists(path), path
    for name in ("tiny-corpus.json", "tiny-training-log.json"):
        assert (assets.assets_dir() / name).is_file()


def test_heldout_prompts_load():
    prompts = assets.load_heldout_prompts()
    assert len(prompts) >= 32
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert assets.load_heldout_prompts(3) == prompts[:3]


def test_pair_loads_with_shared_vocab(pair):
    (target, t_tok), (draft, d_tok) = pair["target"], pair["draft"]
    assert t_tok.is_fast and d_tok.is_fast
    assert t_tok.get_vocab() == d_tok.get_vocab()
    assert target.config.vocab_size == draft.config.vocab_size == len(t_tok)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(target.config, key) == getattr(draft.config, key) == getattr(t_tok, key)
        assert getattr(t_tok, key) is not None
    n_target = sum(p.numel() for p in target.parameters())
    n_draft = sum(p.numel() for p in draft.parameters())
    assert n_draft * 2 < n_target


def test_tokenizer_round_trips_heldout_prompts(pair):
    tok = pair["target"][1]
    for prompt in assets.load_heldout_prompts(16):
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id  # prompts start like the training documents do
        assert tok.decode(ids, skip_special_tokens=True) == prompt


def test_target_greedy_continuation_is_not_degenerate(pair):
    model, tok = pair["target"]
    enc = tok(PROMPT, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    new = out[0, enc.input_ids.shape[1]:].tolist()
    assert len(new) == 32
    assert len(set(new)) >= 8, tok.decode(new)
    # Detokenised text re-encodes to text that decodes identically.
    text = tok.decode(new)
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


@torch.no_grad()
def test_draft_agrees_with_target_greedy(pair):
    (target, tok), (draft, _) = pair["target"], pair["draft"]
    agree = total = 0
    for prompt in assets.load_heldout_prompts(8):
        ids = tok(prompt, return_tensors="pt").input_ids
        t_next = target(input_ids=ids).logits.argmax(-1)
        d_next = draft(input_ids=ids).logits.argmax(-1)
        agree += (t_next == d_next).sum().item()
        total += t_next.numel()
    # Chance is ~1/4096; the trained pair agrees far more often (the training log has the rate).
    assert agree / total > 0.3, agree / total


@pytest.mark.parametrize("role", ["target", "draft"])
def test_native_runner_matches_transformers_on_bundled_weights(role):
    import torch

    from minedraft.assets import default_draft_path, default_target_path
    from minedraft.runner.hf_adapter import reference_model
    from minedraft.runner.model_runner import ModelRunner

    path = default_target_path() if role == "target" else default_draft_path()
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(path).encode(assets.load_heldout_prompts(1)[0])
    runner = ModelRunner(path, max_num_seqs=1)
    logits = runner.forward([runner.allocate()], [ids], all_positions=True)[0]
    with torch.no_grad():
        expected = reference_model(path)(torch.tensor([ids])).logits[0]
    assert (logits - expected).abs().max().item() < 1e-4


def test_sd_and_psd_with_the_pair_equal_target_only_greedy():
    from minedraft import Engine, SamplingParams

    prompts = assets.load_heldout_prompts(6)
    params = SamplingParams(max_tokens=32, ignore_eos=True)
    expected = [r.token_ids for r in Engine(mode="ar").generate(prompts, params)]
    for mode in ("sd", "psd"):
        engine = Engine(mode=mode, num_speculative_tokens=4)
        assert [r.token_ids for r in engine.generate(prompts, params)] == expected
        assert engine.metrics.acceptance_rate > 0.3  # a trained pair agrees often
