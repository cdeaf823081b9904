"""Train the tiny target/draft pair bundled in ``minedraft/assets``.

Everything comes from fixed seeds and the Python standard library's own source, so the pair can be
rebuilt on any machine without downloads:

1. corpus: the stdlib ``*.py`` files (tests, codec tables and huge files left out); ~5% of the files,
   chosen by a hash of their relative path, are held out for evaluation and prompts;
2. a byte-level BPE tokenizer (vocabulary 4096) trained with ``tokenizers``;
3. a Llama-family target (~5.4M parameters) trained with cross-entropy;
4. a Llama-family draft (~1.5M parameters) distilled from the target with KL(target || draft);
5. both saved as Hugging Face checkpoint folders plus held-out prompts, a corpus record and a log.

Training runs to wall-clock budgets (``--target-minutes``/``--draft-minutes``); pass
``--target-steps``/``--draft-steps`` instead for a run whose step count is reproducible.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import platform
import random
import shlex
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>"]  # ids 0, 1, 2
VOCAB_SIZE = 4096
SEQ_LEN = 256
MAX_FILE_BYTES = 256_000  # drops pydoc_data/topics.py (prose, 750 kB); keeps _pydecimal.py
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings", "pydoc_data"}
HELDOUT_PERCENT = 5

TARGET_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                    num_attention_heads=8, num_key_value_heads=4)
DRAFT_SHAPE = dict(hidden_size=160, intermediate_size=432, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2)


@dataclass
class Corpus:
    train: list[tuple[str, str]]  # (relative path, text)
    heldout: list[tuple[str, str]]
    root: str


@dataclass
class TrainSpec:
    name: str
    batch_size: int
    lr: float
    budget_s: float
    max_steps: int | None
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    eval_every_s: float = 0.0


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
# models


def make_model(shape: dict, tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=ids[0],
        eos_token_id=ids[1],
        pad_token_id=ids[2],
        **shape,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings are counted once


def ce_loss(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def distill_loss(draft_logits, target_logits, labels, ce_weight: float):
    """KL(target || draft) per token, plus a little CE on the data to keep the draft grounded."""
    logq = F.log_softmax(draft_logits.float(), dim=-1)
    logp = F.log_softmax(target_logits.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean()
    return kl + ce_weight * ce_loss(draft_logits, labels)


def lr_at(spec: TrainSpec, step: int, progress: float) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return spec.lr * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * cos)


# ---------------------------------------------------------------------------------------------
# training


def make_optimizer(model, spec: TrainSpec):
    # Decay matrices (incl. the tied embedding) but not the RMSNorm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)


def batches(chunks, batch_size: int, gen):
    """Endless shuffled epochs over the non-overlapping chunks; yields (inputs, labels)."""
    while True:
        order = torch.randperm(len(chunks), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            rows = chunks[order[i : i + batch_size]]
            yield rows[:, :-1], rows[:, 1:]


def train(model, spec: TrainSpec, chunks, gen, step_loss, eval_fn) -> dict:
    """Run AdamW with warmup + cosine decay until the step or time budget is spent.

    ``step_loss(inputs, labels)`` returns the loss to minimise; ``eval_fn()`` returns a dict of
    held-out numbers, called every ``spec.eval_every_s`` seconds of training time and at the end.
    Time spent evaluating does not count against the budget.
    """
    model.train()
    opt = make_optimizer(model, spec)
    data = batches(chunks, spec.batch_size, gen)
    curve, evals, window = [], [], []
    train_s, next_eval, step = 0.0, spec.eval_every_s, 0
    unit = "step" if spec.max_steps else "s"
    bar = tqdm(total=spec.max_steps or round(spec.budget_s), desc=spec.name, mininterval=5,
               bar_format="{l_bar}{bar}| {n:.0f}/{total} " + unit + " [{elapsed}<{remaining}{postfix}]")
    while (spec.max_steps and step < spec.max_steps) or (not spec.max_steps and train_s < spec.budget_s):
        progress = step / spec.max_steps if spec.max_steps else train_s / spec.budget_s
        lr = lr_at(spec, step, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        t = time.perf_counter()
        inputs, labels = next(data)
        loss = step_loss(inputs, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t
        train_s += dt
        step += 1
        window.append(loss.item())
        bar.update(1 if spec.max_steps else min(dt, max(0.0, spec.budget_s - bar.n)))
        if step % 10 == 0:
            curve.append({"step": step, "train_s": round(train_s, 1), "lr": lr,
                          "loss": round(sum(window) / len(window), 4)})
            bar.set_postfix(step=step, loss=curve[-1]["loss"], lr=f"{lr:.2e}")
            window = []
        if spec.eval_every_s and train_s >= next_eval:
            evals.append({"step": step, "train_s": round(train_s, 1), **eval_fn()})
            next_eval += spec.eval_every_s
            model.train()
    bar.close()
    if not evals or evals[-1]["step"] != step:
        evals.append({"step": step, "train_s": round(train_s, 1), **eval_fn()})
    model.eval()
    return {"steps": step, "train_s": round(train_s, 1),
            "tokens_seen": step * spec.batch_size * SEQ_LEN, "batch_size": spec.batch_size,
            "seq_len": SEQ_LEN, "peak_lr": spec.lr, "warmup_steps": spec.warmup_steps,
            "min_lr_ratio": spec.min_lr_ratio, "weight_decay": spec.weight_decay,
            "train_loss_curve": curve, "heldout_evals": evals}


@torch.no_grad()
def evaluate(target, draft, chunks, batch_size: int = 8) -> dict:
    """Held-out CE of each model and how often the draft's argmax equals the target's."""
    was = [m.training for m in (target, draft) if m is not None]
    sums = {"target_loss": 0.0, "draft_loss": 0.0, "greedy_agreement": 0.0, "kl": 0.0}
    n_tok = 0
    for m in (target, draft):
        if m is not None:
            m.eval()
    for i in range(0, len(chunks), batch_size):
        rows = chunks[i : i + batch_size]
        inputs, labels = rows[:, :-1], rows[:, 1:]
        n = labels.numel()
        t_logits = target(input_ids=inputs).logits if target is not None else None
        d_logits = draft(input_ids=inputs).logits if draft is not None else None
        if t_logits is not None:
            sums["target_loss"] += ce_loss(t_logits, labels).item() * n
        if d_logits is not None:
            sums["draft_loss"] += ce_loss(d_logits, labels).item() * n
        if t_logits is not None and d_logits is not None:
            agree = t_logits.argmax(-1) == d_logits.argmax(-1)
            sums["greedy_agreement"] += agree.float().sum().item()
            sums["kl"] += distill_loss(d_logits, t_logits, labels, 0.0).item() * n
        n_tok += n
    for m, w in zip([m for m in (target, draft) if m is not None], was):
        m.train(w)
    keep = {"target_loss"} if draft is None else {"draft_loss"} if target is None else set(sums)
    return {k: round(v / n_tok, 4) for k, v in sums.items() if k in keep} | {"tokens": n_tok}


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


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(model, fast_tok, folder: Path) -> None:
    """Hugging Face folder with bf16 weights (half the bytes) whose config asks for float32.

    The models were trained in float32 and the runner computes in float32 on CPU; recording
    ``dtype: float32`` makes ``from_pretrained(folder)`` upcast the bf16 tensors instead of
    computing in bf16, so every loader sees the same numbers by default.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    model.to(torch.float32)
    (folder / "model.safetensors").chmod(0o644)  # written 0600; the package must be world-readable
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    fast_tok.save_pretrained(folder)
    # transformers 5 writes its own "TokenizersBackend" class name; the generic fast class also
    # loads under transformers 4.x (pyproject allows >= 4.45).
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.pop("backend", None)
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    special = folder / "special_tokens_map.json"
    if not special.exists():  # newer transformers fold this into tokenizer_config.json
        bos, eos, pad = SPECIAL_TOKENS
        special.write_text(json.dumps({"bos_token": bos, "eos_token": eos, "pad_token": pad}, indent=2) + "\n")


# The gateway's /v1/chat/completions renders messages with this. The pair knows only Python source,
# so the conversation is laid out as comments, which it continues with code.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}# {{ m['role'] }}: {{ m['content'] | replace('\\n', '\\n# ') }}\n"
                 "{% endfor %}{% if add_generation_prompt %}# assistant:\n{% endif %}")


def load_checkpoint(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def machine_info(threads: int) -> dict:
    import tokenizers
    import transformers

    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "torch_threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


# ---------------------------------------------------------------------------------------------
# entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minedraft train-tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "assets"),
                   help="output folder (default: minedraft/assets)")
    p.add_argument("--target-minutes", type=float, default=18.0, help="target training time budget")
    p.add_argument("--draft-minutes", type=float, default=12.0, help="draft distillation time budget")
    p.add_argument("--target-steps", type=int, default=None, help="fixed step count (overrides minutes)")
    p.add_argument("--draft-steps", type=int, default=None, help="fixed step count (overrides minutes)")
    p.add_argument("--threads", type=int, default=1, help="torch / tokenizers threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-batch", type=int, default=4)
    p.add_argument("--draft-batch", type=int, default=4)
    p.add_argument("--target-lr", type=float, default=1.5e-3)
    p.add_argument("--draft-lr", type=float, default=3e-3)
    p.add_argument("--ce-weight", type=float, default=0.1, help="weight of data CE in the draft loss")
    p.add_argument("--eval-chunks", type=int, default=48, help="held-out windows of 256 tokens to score")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--stdlib", default=None, help="corpus root (default: this Python's stdlib)")
    return p.parse_args(argv)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv] if argv is None else ["minedraft", "train-tiny", *argv])
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # the tokenizers library's thread pool
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    walls, t0 = {}, time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        walls[name] = round(now - since, 1)
        print(f"[train-tiny] {name}: {walls[name]} s", flush=True)
        return now

    corpus = load_corpus(args.stdlib)
    record = corpus_record(corpus)
    _write_json(out / "tiny-corpus.json", record)
    t = lap("corpus", t0)

    tok = train_tokenizer([text for _, text in corpus.train])
    fast_tok = wrap_fast_tokenizer(tok)
    t = lap("tokenizer", t)

    train_chunks = to_chunks(encode_stream(tok, [text for _, text in corpus.train]))
    eval_chunks = to_chunks(encode_stream(tok, [text for _, text in corpus.heldout]))[: args.eval_chunks]
    tokenizer_info = {"vocab_size": tok.get_vocab_size(), "special_tokens": SPECIAL_TOKENS,
                      "train_tokens": len(train_chunks) * SEQ_LEN, "train_windows": len(train_chunks),
                      "heldout_eval_tokens": eval_chunks.shape[0] * SEQ_LEN,
                      "train_bytes_per_token": round(record["train_bytes"] / (len(train_chunks) * SEQ_LEN), 3)}
    print(f"[train-tiny] data: {record['train_files']} train files, {record['heldout_files']} held out; "
          f"{tokenizer_info['train_tokens']} train tokens", flush=True)
    t = lap("encode", t)

    gen = torch.Generator().manual_seed(args.seed)
    target = make_model(TARGET_SHAPE, tok, args.seed)
    t_spec = TrainSpec("target", args.target_batch, args.target_lr, args.target_minutes * 60,
                       args.target_steps, eval_every_s=args.target_minutes * 60 / 4)
    t_run = train(target, t_spec, train_chunks, gen,
                  lambda x, y: ce_loss(target(input_ids=x).logits, y),
                  lambda: evaluate(target, None, eval_chunks[:16]))
    t = lap("target", t)

    draft = make_model(DRAFT_SHAPE, tok, args.seed + 1)
    target.requires_grad_(False)

    def distill_step(x, y):
        with torch.no_grad():
            t_logits = target(input_ids=x).logits
        return distill_loss(draft(input_ids=x).logits, t_logits, y, args.ce_weight)

    d_spec = TrainSpec("draft", args.draft_batch, args.draft_lr, args.draft_minutes * 60,
                       args.draft_steps, eval_every_s=args.draft_minutes * 60 / 4)
    d_run = train(draft, d_spec, train_chunks, gen, distill_step,
                  lambda: evaluate(target, draft, eval_chunks[:16]))
    d_run["ce_weight"] = args.ce_weight
    t = lap("draft", t)

    # Final numbers come from the saved folders, as every user will load them.
    save_checkpoint(target, fast_tok, out / "tiny-target")
    save_checkpoint(draft, fast_tok, out / "tiny-draft")
    final = evaluate(load_checkpoint(out / "tiny-target"), load_checkpoint(out / "tiny-draft"), eval_chunks)
    prompts = heldout_prompts(corpus.heldout, args.prompts, args.seed)
    with open(out / "heldout_prompts.jsonl", "w") as f:
        for row in prompts:
            f.write(json.dumps(row) + "\n")
    lap("save_and_eval", t)
    walls["total"] = round(time.perf_counter() - t0, 1)

    log = {
        "command": command, "seed": args.seed, "machine": machine_info(args.threads),
        "weights_stored_as": "bfloat16 (config dtype float32: loaders upcast)",
        "tokenizer": tokenizer_info,
        "target": {"shape": TARGET_SHAPE, "params": n_params(target), **t_run},
        "draft": {"shape": DRAFT_SHAPE, "params": n_params(draft), "loss": "KL(target||draft) + ce_weight*CE",
                  **d_run},
        "heldout_final": final, "heldout_prompts": len(prompts), "wall_s": walls,
    }
    _write_json(out / "tiny-training-log.json", log)
    print(f"[train-tiny] held-out: {json.dumps(final)}; params target {n_params(target)}, "
          f"draft {n_params(draft)}; wall {walls['total']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
