"""Streaming detokenisation: the pieces a stream sends add up to decoding the whole output at once,
whatever the chunking, with partial UTF-8 characters held back."""

import random

import pytest

from gateway.detokenizer import IncrementalDetokenizer
from minedraft import assets
from minedraft.runner import hf_adapter


@pytest.fixture(scope="module")
def tokenizer():
    return hf_adapter.load_tokenizer(assets.default_target_path())


def stream(tokenizer, ids, rng):
    detok, pieces, i = IncrementalDetokenizer(tokenizer), [], 0
    while i < len(ids):
        n = rng.randint(1, 5)
        pieces.append(detok.push(ids[i:i + n], final=i + n >= len(ids)))
        i += n
    return pieces


def test_pieces_add_up_to_the_whole_decode(tokenizer):
    rng = random.Random(0)
    for _ in range(200):  # random ids include byte tokens that only make a character together
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 60))]
        assert "".join(stream(tokenizer, ids, rng)) == tokenizer.decode(ids, skip_special_tokens=True)


def test_real_text_streams_word_by_word(tokenizer):
    text = "The quick brown fox jumps over the lazy dog, naïvely. 日本語も大丈夫です。"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = stream(tokenizer, ids, random.Random(1))
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)  # a split character waits for its last byte


def test_a_split_character_waits_for_its_last_byte(tokenizer):
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1  # the bundled tokenizer spells it in bytes
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.push([i], final=n == len(ids) - 1) for n, i in enumerate(ids)] == [""] * (len(ids) - 1) + ["🙂"]
