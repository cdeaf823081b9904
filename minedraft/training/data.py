"""The bundled pair's data: the corpus (the stdlib's own source), its tokenizer, training windows
and held-out prompts."""

from __future__ import annotations

import ast
import hashlib
import platform
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]  # ids 0, 1, 2
VOCAB_SIZE = 4096
SEQ_LEN = 256
MAX_FILE_BYTES = 256_000  # drops pydoc_data/topics.py (prose, 750 kB); keeps _pydecimal.py
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "pydoc_data"}
HELDOUT_PERCENT = 5


@dataclass
class Corpus:
    train: list[tuple[str, str]]  # (relative path, text)
    heldout: list[tuple[str, str]]
    root: str


# ---------------------------------------------------------------------------------------------
# corpus


def is_heldout(rel_path: str) -> bool:
    digest = hashlib.sha256(rel_path.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def load_corpus(root: str | None = None) -> Corpus:
    root_path = Path(root or sysconfig.get_paths()["stdlib"])
    train, heldout = [], []
    for path in sorted(root_path.rglob("*.py")):
        rel = path.relative_to(root_path).as_posix()
        parts = rel.split("/")
        if any(p in SKIP_DIRS for p in parts[:-1]) or parts[-1].startswith("test"):
            continue
        data = path.read_bytes()
        if not data.strip() or len(data) > MAX_FILE_BYTES:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a handful of latin-1 fixtures; not worth special-casing
        (heldout if is_heldout(rel) else train).append((rel, text))
    return Corpus(train=train, heldout=heldout, root=str(root_path))


def corpus_record(corpus: Corpus) -> dict:
    def nbytes(files):
        return sum(len(t.encode()) for _, t in files)

    return {
        "python_version": platform.python_version(),
        "stdlib_root": corpus.root,
        "skip_dirs": sorted(SKIP_DIRS),
        "max_file_bytes": MAX_FILE_BYTES,
        "heldout_rule": f"sha256(relative path)[:4] as big-endian int % 100 < {HELDOUT_PERCENT}",
        "train_files": len(corpus.train),
        "train_bytes": nbytes(corpus.train),
        "heldout_files": len(corpus.heldout),
        "heldout_bytes": nbytes(corpus.heldout),
        "heldout_file_list": [rel for rel, _ in corpus.heldout],
    }


# ---------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # No prefix space: "def f" must encode the same at the start of a prompt as mid-file.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Documents start with <|bos|> in training, so encoded prompts get one too (Llama convention).
    bos = SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


def wrap_fast_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=512,
        clean_up_tokenization_spaces=False,  # the default cleanup rewrites " ." etc. in code
    )


def encode_stream(tok, texts: list[str]):
    """One flat id tensor: <|bos|> file <|eos|> <|bos|> file <|eos|> ..."""
    bos, eos = tok.token_to_id(SPECIAL_TOKENS[0]), tok.token_to_id(SPECIAL_TOKENS[1])
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.append(bos)
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def to_chunks(stream, seq_len: int = SEQ_LEN):
    """Non-overlapping windows of seq_len + 1 ids (inputs and shifted labels)."""
    return stream.unfold(0, seq_len + 1, seq_len)


# ---------------------------------------------------------------------------------------------
# held-out prompts


def _is_docstring(stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def prompt_for(lines: list[str], func, min_chars: int, max_chars: int) -> str | None:
    """Context lines + decorators + signature + the docstring's first line, without trailing space.

    The prompt ends right after text (never after whitespace) so its last token is one the
    tokenizer also produces mid-file.
    """
    start = min([d.lineno for d in func.decorator_list] + [func.lineno]) - 1
    doc_line = func.body[0].lineno - 1
    end = doc_line + 1
    if lines[doc_line].strip().lstrip("rRuU") in ('"""', "'''") and end < len(lines):
        end += 1  # the docstring opens on its own line: take its first line of text too
    core = "".join(lines[start:end]).rstrip()
    if len(core) > max_chars:
        return None
    while start > 0 and len(core.lstrip("\n")) < min_chars:
        candidate = lines[start - 1] + core
        if len(candidate.lstrip("\n")) > max_chars:
            break
        core, start = candidate, start - 1
    core = core.lstrip("\n")  # blank lines between context and def stay; leading ones go
    return core if min_chars <= len(core) <= max_chars else None


def heldout_prompts(files: list[tuple[str, str]], n: int, seed: int, min_chars: int = 100,
                    max_chars: int = 300, per_file: int = 4) -> list[dict]:
    rng = random.Random(seed)
    by_file: list[list[dict]] = []
    for rel, text in files:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines(keepends=True)
        found, seen = [], set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_docstring(node.body[0]):
                prompt = prompt_for(lines, node, min_chars, max_chars)
                if prompt and prompt not in seen:
                    seen.add(prompt)
                    found.append({"prompt": prompt, "file": rel, "line": node.lineno})
        found.sort(key=lambda r: r["line"])
        rng.shuffle(found)
        by_file.append(found)
    # Cap prompts per file so a few big modules do not dominate; lift the cap if that is too few.
    pool = [r for found in by_file for r in found[:per_file]]
    if len(pool) < n:
        pool = [r for found in by_file for r in found]
    return rng.sample(pool, min(n, len(pool)))
