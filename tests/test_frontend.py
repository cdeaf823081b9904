"""The one front end (Engine, gRPC and HTTP share it) and the one draft/target compatibility rule."""

import dataclasses
import types

import pytest

from minedraft import assets
from minedraft.runner import hf_adapter
from minedraft.spec.compat import check_draft_fits_target, tokenizer_digest
from minedraft.spec.frontend import ENGINE_WORDS, Frontend, SchedulerSink
from minedraft.spec.sampling import SamplingParams


def test_a_prefix_vocabulary_with_the_same_tokenizer_fits():
    check_draft_fits_target(151_936, 152_064, "abc", "abc")  # Qwen2.5-0.5B against 7B
    check_draft_fits_target(90, 101, "", "abc")  # a draft without a tokenizer reads the target's ids


@pytest.mark.parametrize("draft, target, match", [
    ((120, "abc"), (101, "abc"), "draft: vocabulary size 120 is larger than the target's 101"),
    ((101, "abc"), (101, "xyz"), "draft: its tokenizer differs from the target's"),
    ((101, "abc"), (101, ""), "draft: its tokenizer differs from the target's"),
])
def test_drafts_that_do_not_fit_are_refused_naming_the_field(draft, target, match):
    with pytest.raises(ValueError, match=match):
        check_draft_fits_target(draft[0], target[0], draft[1], target[1])


def test_the_digest_is_the_tokenizers_not_the_embeddings():
    draft, target = (hf_adapter.load_tokenizer(p) for p in (assets.default_draft_path(), assets.default_target_path()))
    assert tokenizer_digest(draft) == tokenizer_digest(target) != ""
    assert tokenizer_digest(None) == ""


class _Tokenizer:
    def encode(self, text, add_special_tokens=True):
        return [1] + [3 + len(w) for w in text.split()]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


TOKENIZER = _Tokenizer()


def _frontend(tokenizer=TOKENIZER, words=ENGINE_WORDS, context_len=16):
    scheduler = types.SimpleNamespace(waiting=[], running={}, mode="sd", k=3, max_num_seqs=8, aborted=[],
                                      is_staged=lambda request_id: False)
    scheduler.add = scheduler.waiting.append
    scheduler.abort = scheduler.aborted.append
    return Frontend(SchedulerSink(scheduler), tokenizer, (2,), vocab_size=50, context_len=context_len,
                    model="m", words=words), scheduler


def test_submit_tokenises_validates_and_queues():
    frontend, scheduler = _frontend(context_len=lambda: 10)  # a source: read per request
    req = frontend.submit("a bb", SamplingParams(max_tokens=64, stop_token_ids=[7]), "r1")
    assert scheduler.waiting == [req] and req.prompt_ids == [1, 4, 5]
    assert req.max_new_tokens == 10 - 3 and req.stop_ids == {2, 7}
    assert frontend.submit([1, 4], SamplingParams(ignore_eos=True), "r2").stop_ids == frozenset()
    with pytest.raises(ValueError, match=r"prompt: token id 50 is outside the vocabulary \[0, 50\)"):
        frontend.submit([1, 50], SamplingParams(), "r3")
    assert frontend.abort("r1") and not frontend.abort("nope") and scheduler.aborted == ["r1", "nope"]
    assert dataclasses.astuple(frontend.model_info()) == ("m", "sd", 3, 8, 50, 10)
    assert frontend.decode([4, 5]) == "4 5"


def test_each_face_keeps_its_own_words():
    from gateway.connection import GATEWAY_WORDS

    for words, empty, no_tok in [
        (ENGINE_WORDS, "prompt: must not be empty", "prompt: this checkpoint has no tokenizer; pass token ids"),
        (GATEWAY_WORDS, "prompt: must not be empty (give prompt or prompt_ids)",
         "prompt: this gateway has no tokenizer; send prompt_ids"),
    ]:
        with pytest.raises(ValueError) as err:
            _frontend(words=words)[0].encode("")
        assert str(err.value) == empty
        with pytest.raises(ValueError) as err:
            _frontend(tokenizer=None, words=words)[0].encode("hi")
        assert str(err.value) == no_tok
