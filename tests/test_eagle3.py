"""EAGLE-3 heads, in process: a random head written in the published layout (tests/eagle3_heads.py)
loads, from model.safetensors and from pytorch_model.bin; the drafts and q of a few chained steps
equal a dense float64 reference of the published formula; the target exports the residual states
entering the head's layers, equal to transformers' hidden_states at those indices (prefill, verify and
a re-forward); greedy SD/PSD with an EAGLE-3 head equals target-only greedy (Llama and Qwen3 targets,
full and reduced draft vocabularies); sampled output follows the target (chi-square); a tensor of the
wrong shape, or bad layer ids, are refused naming it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import chisquare

from minedraft import Engine, SamplingParams
from minedraft.drafting.eagle3_head import Eagle3Head
from minedraft.drafting.eagle_format import UnsupportedHead, load_head, save_head
from minedraft.drafting.eagle_worker import EagleDraftWorker
from minedraft.drafting.features import FeatureStore
from minedraft.runner.hf_adapter import greedy_generate, save_random_model
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.local_workers import LocalTargetWorker
from minedraft.spec.logits_processing import probs_from_logits
from minedraft.spec.workers import NewRequest, Proposal
from tests.eagle3_heads import reference, write_head
from tests.model_factory import family_config

NUM_LAYERS = 8  # aux layers (2, 4, 5)
MAX_TOKENS = 20


def _target(folder, family="llama", seed=1):
    cfg = family_config(family, NUM_LAYERS)
    return str(folder), save_random_model(cfg, folder, seed=seed), cfg


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _target(tmp_path_factory.mktemp("e3_llama"))


def _prompts(n=5):
    return [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(1 + 5 * i)] for i in range(n)]


@pytest.mark.parametrize("bin_file", [False, True])
@pytest.mark.parametrize("reduced", [False, True])
def test_published_layout_loads_and_drafts_as_the_reference(tmp_path, llama, bin_file, reduced):
    target_dir, ref, cfg = llama
    ids = torch.arange(1, cfg.vocab_size, 2) if reduced else None
    state = write_head(tmp_path / "head", cfg, ids, seed=4, bin_file=bin_file)
    head = load_head(str(tmp_path / "head"), target_dir)
    assert isinstance(head, Eagle3Head) and head.feature_layers == (2, 4, 5)
    assert head.feature_width == 3 * cfg.hidden_size
    assert head.draft_vocab_size == (len(ids) if reduced else cfg.vocab_size)
    # drafting: a greedy row and a sampled row (its q per step is the head's softmax over its vocabulary)
    store = FeatureStore(head.feature_layers)
    worker = EagleDraftWorker(head, store, context_len=64, max_num_seqs=2)
    gen = torch.Generator().manual_seed(0)
    prompts = {"g": [1, 9, 33, 4, 70, 12], "s": [1, 5, 6, 7]}
    feats = {r: torch.randn(len(p) - 1, 3 * cfg.hidden_size, generator=gen) for r, p in prompts.items()}
    worker.add([NewRequest("g", prompts["g"], SamplingParams(), seed=0),
                NewRequest("s", prompts["s"], SamplingParams(temperature=1.0), seed=0)])
    for rid, f in feats.items():
        store.put(rid, 0, f)
    k = 4
    proposal = worker.propose(["g", "s"], k, {})
    embed = ref.model.embed_tokens.weight.detach()
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    for row, rid in enumerate(["g", "s"]):
        tokens, hidden = list(prompts[rid][1:]), list(feats[rid])
        for step in range(k):
            out, logits = reference(state, embed, tokens, hidden, nh, nkv)
            drafted = int(proposal.tokens[row, step])
            if rid == "g":
                best = int(logits[-1].argmax())
                assert drafted == (int(ids[best]) if reduced else best), f"step {step}"
            else:
                q = proposal.probs[0, step]
                q = q[ids] if reduced else q
                torch.testing.assert_close(q.double(), logits[-1].softmax(-1), atol=2e-5, rtol=1e-4)
            tokens.append(drafted)
            hidden.append(out[-1].float())  # the head's own pre-norm output, fed back without fc
    # the dense path (training's) is the same math
    t = torch.tensor([prompts["g"][1:]])
    out, logits = head.forward_dense(t, feats["g"][None])
    ref_out, ref_logits = reference(state, embed, prompts["g"][1:], list(feats["g"]), nh, nkv)
    torch.testing.assert_close(logits[0].double(), ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[0].double(), ref_out, atol=1e-4, rtol=1e-4)


def test_round_trip_keeps_the_published_names(tmp_path, llama):
    target_dir, _, cfg = llama
    write_head(tmp_path / "a", cfg, torch.arange(0, cfg.vocab_size, 3), seed=2, layers=[6, 1, 3])  # ascending
    head = load_head(str(tmp_path / "a"), target_dir)
    save_head(head, tmp_path / "b", target_dir)
    assert set(load_file(str(tmp_path / "b" / "model.safetensors"))) == set(
        load_file(str(tmp_path / "a" / "model.safetensors")))
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == 34
    again = load_head(str(tmp_path / "b"), target_dir)
    assert again.feature_layers == (1, 3, 6)
    tokens, feats = torch.tensor([[5, 6, 7]]), torch.randn(1, 3, 3 * cfg.hidden_size)
    assert torch.equal(again.forward_dense(tokens, feats)[1], head.forward_dense(tokens, feats)[1])


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("layers", [None, (1, 6, 7)])
def test_target_exports_the_states_entering_the_aux_layers(tmp_path, family, layers):
    target_dir, ref, cfg = _target(tmp_path, family)
    want = layers or (2, NUM_LAYERS // 2, NUM_LAYERS - 3)
    store = FeatureStore(want)
    runner = ModelRunner(target_dir, max_num_seqs=2, enable_prefix_caching=False)
    target = LocalTargetWorker(runner, feature_store=store)
    prompt = [1, 17, 30, 45, 99, 12, 7]
    greedy = greedy_generate(ref, prompt, 4)
    assert target.add([NewRequest("r", prompt, SamplingParams(), seed=0)])[0] == greedy[0]
    (start, prefill), = store.take("r")
    assert start == 0 and prefill.shape == (len(prompt), 3 * cfg.hidden_size)
    wrong = (greedy[3] + 1) % cfg.vocab_size
    verdict = target.verify(Proposal(["r"], 3, torch.tensor([[greedy[1], greedy[2], wrong]])))
    assert verdict.num_accepted == [2]
    (start, verified), = store.take("r")
    assert start == len(prompt) and verified.shape[0] == 3
    with torch.no_grad():
        states = ref(input_ids=torch.tensor([prompt + greedy[:3]]), output_hidden_states=True).hidden_states
    expected = torch.cat([states[i][0] for i in want], -1)  # hidden_states[i]: the state entering layer i
    torch.testing.assert_close(torch.cat([prefill, verified]), expected, atol=1e-4, rtol=1e-4)
    (_rid, _start, again), = target.features_of([NewRequest("r", prompt + greedy[:4], SamplingParams(), seed=0,
                                                             resume=True)])
    torch.testing.assert_close(again, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family,reduced", [("llama", False), ("llama", True), ("qwen3", True)])
@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_greedy_with_an_eagle3_head_equals_target_only(tmp_path, family, reduced, mode):
    target_dir, ref, cfg = _target(tmp_path / "t", family)
    ids = torch.arange(0, cfg.vocab_size, 2) if reduced else None
    write_head(tmp_path / "head", cfg, ids, seed=5)
    prompts = _prompts()
    expected = [greedy_generate(ref, p, MAX_TOKENS) for p in prompts]
    with Engine(target_dir, str(tmp_path / "head"), draft_method="eagle", mode=mode, num_speculative_tokens=3,
                max_num_seqs=4) as engine:
        results = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
        missing = engine.scheduler.draft.missing_features
    assert [r.token_ids for r in results] == expected
    drafted, accepted = sum(r.num_drafted for r in results), sum(r.num_accepted for r in results)
    print(f"eagle3 {family} reduced={reduced} {mode}: accepted {accepted}/{drafted}")
    assert drafted > 0 and missing == 0


N, TOP_K = 3000, 3


def test_sampled_output_follows_the_target_with_an_eagle3_head(tmp_path, llama):
    target_dir, ref, cfg = llama
    params = SamplingParams(temperature=1.0, top_k=TOP_K, max_tokens=3, ignore_eos=True)
    prompt = [1, 40, 41, 8, 19, 77, 3]

    def next_probs(ids):
        with torch.no_grad():
            return probs_from_logits(ref(input_ids=torch.tensor([ids])).logits[:, -1].float(), [params])[0]

    joint, p1 = {}, next_probs(prompt)
    for t1 in torch.nonzero(p1)[:, 0].tolist():
        p2 = next_probs(prompt + [t1])
        for t2 in torch.nonzero(p2)[:, 0].tolist():
            p3 = next_probs(prompt + [t1, t2])
            for t3 in torch.nonzero(p3)[:, 0].tolist():
                joint[(t1, t2, t3)] = (p1[t1] * p2[t2] * p3[t3]).item()
    # A reduced vocabulary of the tokens the target may emit here (so that a random head's top 3 meets
    # the target's often enough for both verification paths) and a few others, less the target's 2nd
    # likeliest first token, which only the residual max(0, p - q) can then emit.
    left_out = {int(p1.topk(TOP_K).indices[1])}
    vocab = ({t for c in joint for t in c} | set(range(0, cfg.vocab_size, 10))) - left_out
    write_head(tmp_path / "head", cfg, sorted(vocab), seed=6, scale=0.04)
    with Engine(target_dir, str(tmp_path / "head"), draft_method="eagle", mode="sd", num_speculative_tokens=3,
                max_num_seqs=64) as engine:
        results = engine.generate([prompt] * N, params)
    drafted, accepted = sum(r.num_drafted for r in results), sum(r.num_accepted for r in results)
    assert 0 < accepted < drafted  # both verification paths ran
    cells = sorted(joint)
    index = {c: i for i, c in enumerate(cells)}
    counts = np.zeros(len(cells))
    for r in results:
        key = tuple(r.token_ids[:3])
        assert key in index, f"emitted {key}, which the target gives probability 0"
        counts[index[key]] += 1
    expected = np.array([joint[c] for c in cells])
    pvalue = chisquare(counts, expected / expected.sum() * N).pvalue
    print(f"eagle3 sampled: {len(cells)} cells, accepted {accepted}/{drafted}, chi-square p = {pvalue:.3g}")
    assert pvalue > 1e-3
    assert len(set(itertools.chain.from_iterable(c[:1] for c in cells))) == TOP_K
    assert any(c[0] in left_out for c in joint)


def _bad(state, cfg):
    h = cfg.hidden_size
    return {
        "midlayer.self_attn.q_proj.weight": lambda: state.update(
            {"midlayer.self_attn.q_proj.weight": state["midlayer.self_attn.q_proj.weight"][:, :h]}),
        "fc.weight": lambda: state.update({"fc.weight": state["fc.weight"][:, :2 * h]}),
        "midlayer.mlp.down_proj.weight": lambda: state.update(
            {"midlayer.mlp.down_proj.weight": state["midlayer.mlp.down_proj.weight"].T.contiguous()}),
        "lm_head.weight": lambda: state.update({"lm_head.weight": state["lm_head.weight"][:-1]}),
        "midlayer.hidden_norm.weight": lambda: state.pop("midlayer.hidden_norm.weight"),
        "norm.weight": lambda: state.update({"norm.weight": torch.ones(h + 1)}),
        "layers.1": lambda: state.update({"layers.1.mlp.up_proj.weight": torch.zeros(2, 2)}),
    }


@pytest.mark.parametrize("field", list(_bad({}, family_config("llama"))))
def test_wrong_shapes_are_refused_naming_the_tensor(tmp_path, llama, field):
    target_dir, _, cfg = llama
    write_head(tmp_path / "h", cfg, torch.arange(0, cfg.vocab_size, 2))
    state = load_file(str(tmp_path / "h" / "model.safetensors"))
    _bad(state, cfg)[field]()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "h" / "model.safetensors"))
    with pytest.raises(UnsupportedHead, match=field.replace(".", r"\.")):
        load_head(str(tmp_path / "h"), target_dir)


def test_bad_layer_ids_and_widths_are_refused(tmp_path, llama):
    target_dir, _, cfg = llama
    write_head(tmp_path / "h", cfg, layers=[2, 4, NUM_LAYERS])
    with pytest.raises(UnsupportedHead, match=r"eagle_aux_hidden_state_layer_ids: .*\[8\] outside"):
        load_head(str(tmp_path / "h"), target_dir)
    write_head(tmp_path / "w", cfg, extra_config={"target_hidden_size": 2 * cfg.hidden_size})
    with pytest.raises(UnsupportedHead, match="hidden_size"):
        load_head(str(tmp_path / "w"), target_dir)
    write_head(tmp_path / "ok", cfg)
    head = load_head(str(tmp_path / "ok"), target_dir)
    store = FeatureStore(head.feature_layers)
    worker = EagleDraftWorker(head, store, context_len=32, max_num_seqs=1)
    worker.add([NewRequest("r", [1, 2, 3], SamplingParams(), seed=0)])
    store.put("r", 0, torch.zeros(2, cfg.hidden_size))  # an EAGLE-1 width from a misconfigured target
    before = list(worker.rows["r"].tokens)
    with pytest.raises(ValueError, match=r"features: the target sent width 64, this eagle3 head reads 192"):
        worker.propose(["r"], 2, {"r": [4]})
    assert worker.rows["r"].tokens == before  # the refused update was not half taken
