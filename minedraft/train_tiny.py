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
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch

from minedraft.training.data import (
    SEQ_LEN,
    SPECIAL_TOKENS,
    corpus_record,
    encode_stream,
    heldout_prompts,
    load_corpus,
    to_chunks,
    train_tokenizer,
    wrap_fast_tokenizer,
)
from minedraft.training.loop import TrainSpec, ce_loss, distill_loss, evaluate, train
from minedraft.training.models import DRAFT_SHAPE, TARGET_SHAPE, load_checkpoint, make_model, n_params, save_checkpoint


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
