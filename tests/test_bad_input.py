"""Bad input raises ValueError naming the field, and leaves the engine usable."""

import json

import pytest

from minedraft import Engine, SamplingParams
from minedraft.runner.hf_adapter import save_random_model

from model_factory import family_config


@pytest.fixture(scope="module")
def engine(llama_pair):
    target, draft, _ = llama_pair
    return Engine(target, draft, mode="psd", num_speculative_tokens=2)


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
])
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("prompt, message", [
    ([], "prompt: must not be empty"),
    ("", "prompt: must not be empty"),
    ([1, 2, 101], "outside the vocabulary"),
    ([1, -1], "outside the vocabulary"),
    (list(range(3, 99)), "context"),
])
def test_bad_prompts(engine, prompt, message):
    with pytest.raises(ValueError, match=message):
        engine.generate([prompt], SamplingParams(max_tokens=4))
    # nothing else disturbed: the engine still serves
    assert len(engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4))[0].token_ids) == 4


def test_one_bad_prompt_rejects_the_call_before_running_any(engine):
    with pytest.raises(ValueError, match="prompt"):
        engine.generate([[1, 2, 3], []], SamplingParams(max_tokens=4))
    assert not engine.has_unfinished()


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_bad_k(llama_pair, k):
    target, draft, _ = llama_pair
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        Engine(target, draft, num_speculative_tokens=k)


def test_bad_mode(llama_pair):
    with pytest.raises(ValueError, match="mode"):
        Engine(llama_pair[0], llama_pair[1], mode="turbo")


def test_missing_folder_and_weights(tmp_path, llama_pair):
    with pytest.raises(ValueError, match="does not exist"):
        Engine(str(tmp_path / "nope"), llama_pair[1])
    (tmp_path / "config.json").write_text(json.dumps(family_config("llama").to_dict()))
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        Engine(str(tmp_path), llama_pair[1])


def test_vocabulary_mismatch(tmp_path, llama_pair):
    cfg = family_config("llama")
    cfg.vocab_size = 120
    save_random_model(cfg, tmp_path)
    with pytest.raises(ValueError, match="draft: vocabulary size"):
        Engine(llama_pair[0], str(tmp_path))


def test_tokenizer_mismatch(tmp_path, llama_pair):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def save_tok(folder, words):
        vocab = {w: i for i, w in enumerate(words)}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=words[0]))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))

    target, draft = tmp_path / "t", tmp_path / "d"
    for folder, seed in ((target, 1), (draft, 2)):
        save_random_model(family_config("llama"), folder, seed=seed)
    save_tok(target, [f"w{i}" for i in range(101)])
    save_tok(draft, [f"x{i}" for i in range(101)])
    with pytest.raises(ValueError, match="draft: its tokenizer differs"):
        Engine(str(target), str(draft))
