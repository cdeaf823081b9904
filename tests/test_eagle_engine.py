"""EAGLE drafting in process (Engine(draft_method="eagle")): greedy SD and PSD output equals
target-only token for token, with the bundled head on the bundled target and with random heads on
random Llama and Qwen3 targets (mostly rejections: the rollback path); features reach the head only
when it is attached."""

import pytest
import torch

from minedraft import Engine, SamplingParams
from minedraft.assets import default_eagle_path, load_heldout_prompts
from minedraft.drafting.eagle_format import save_head
from minedraft.runner.hf_adapter import greedy_generate, save_random_model
from minedraft.train_eagle import new_head
from tests.model_factory import family_config

MAX_TOKENS = 24


def random_head(target_dir, folder, seed=0):
    head = new_head(target_dir, seed)
    with torch.no_grad():
        for p in head.parameters():
            if p.requires_grad and p.dim() > 1:
                p.add_(torch.randn_like(p) * 0.05)
    save_head(head, folder, target_dir)
    return str(folder)


@pytest.fixture(scope="module")
def bundled_expected():
    prompts = load_heldout_prompts(6)
    with Engine(mode="ar", max_num_seqs=8) as engine:
        return prompts, [r.token_ids for r in engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))]


@pytest.mark.parametrize("mode,k", [("sd", 3), ("psd", 4), ("psd", "auto")])
def test_bundled_head_greedy_equals_target_only(bundled_expected, mode, k):
    prompts, expected = bundled_expected
    with Engine(draft_method="eagle", mode=mode, num_speculative_tokens=k, max_num_seqs=8) as engine:
        results = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))
    assert [r.token_ids for r in results] == expected
    drafted, accepted = sum(r.num_drafted for r in results), sum(r.num_accepted for r in results)
    print(f"eagle {mode} k={k}: accepted {accepted}/{drafted}")
    assert drafted > 0 and accepted > 0.2 * drafted  # the trained head drafts what the target says (random: ~0.01)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_random_head_greedy_equals_target_only(tmp_path, family, mode):
    target_dir = tmp_path / "target"
    ref = save_random_model(family_config(family), target_dir, seed=1)
    head_dir = random_head(str(target_dir), tmp_path / "head")
    prompts = [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(1 + 5 * i)] for i in range(5)]
    expected = [greedy_generate(ref, p, MAX_TOKENS) for p in prompts]
    with Engine(str(target_dir), head_dir, draft_method="eagle", mode=mode, num_speculative_tokens=3,
                max_num_seqs=4) as engine:
        results = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    assert [r.token_ids for r in results] == expected
    assert sum(r.num_drafted for r in results) > 0


def test_features_flow_only_with_an_eagle_draft():
    prompt = load_heldout_prompts(1)
    with Engine(mode="sd", num_speculative_tokens=3) as engine:  # the bundled model draft
        assert engine.scheduler.target.features is None
        engine.generate(prompt, SamplingParams(max_tokens=8))
    with Engine(draft_method="eagle", mode="sd", num_speculative_tokens=3) as engine:
        store = engine.scheduler.target.features
        assert store is not None and store is engine.scheduler.draft.store
        engine.generate(prompt, SamplingParams(max_tokens=8))
        assert len(store) == 0  # released with the request


def test_eagle_default_head_is_bundled():
    assert default_eagle_path().endswith("tiny-eagle")
