"""`minedraft train-eagle`: train an EAGLE-1 head for a target on the stdlib corpus, on CPU.

Teacher forcing: the frozen target gives every position's final-normed hidden state f_t; head entry t
reads (token_{t+1}, f_t) and predicts f_{t+1}. The loss is EAGLE's: smooth L1 on the feature plus
cross-entropy of the target's next-token distribution against lm_head(predicted feature), through
the frozen LM head. Writes an EAGLE-1 head folder (drafting/eagle_format.py) and a training log.

--draft-vocab D gives the head EAGLE-3's reduced vocabulary: the D most frequent target tokens of
the training corpus (and EOS), an own LM head over them initialised from the target's rows and
trained; the CE term then reads the target's p restricted to them, renormalised. --feature-noise a
adds EAGLE's uniform noise U(-a, a) x (the features' std) to the input features, so chains that
feed back the head's own predicted features hold up. --intermediate-size shrinks the head's MLP."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minedraft.drafting.eagle_format import load_head, read_target_ends, save_head
from minedraft.drafting.eagle_head import EagleHead
from minedraft.runner.hf_adapter import load_model_config
from minedraft.training.data import encode_stream, load_corpus, to_chunks
from minedraft.training.loop import TrainSpec, train
from minedraft.training.models import load_checkpoint, n_params


def parse_args(argv):
    from minedraft.assets import default_eagle_path, default_target_path

    p = argparse.ArgumentParser(prog="minedraft train-eagle", description=__doc__.splitlines()[0])
    p.add_argument("--target", default=default_target_path(), help="target checkpoint folder (its tokenizer too)")
    p.add_argument("--out", default=default_eagle_path(), help="head folder to write (config.json + weights)")
    p.add_argument("--log", default=None, help="training log JSON (default: OUT/training-log.json)")
    p.add_argument("--stdlib", default=None, help="corpus root (default: this Python's stdlib)")
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps instead")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ce-weight", type=float, default=0.5, help="weight of the cross-entropy term")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="continue training this EAGLE-1 head folder")
    p.add_argument("--draft-vocab", type=int, default=None,
                   help="reduced draft vocabulary size (EAGLE-3's d2t; default: the full vocabulary)")
    p.add_argument("--feature-noise", type=float, default=0.0,
                   help="uniform input-feature noise amplitude, in units of the features' std (EAGLE: 0.1)")
    p.add_argument("--intermediate-size", type=int, default=None,
                   help="the head's MLP width (default: the target's; a fresh head only)")
    args = p.parse_args(argv)
    for name in ("minutes", "lr", "ce_weight"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    for name in ("batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps: must be >= 1, got {args.steps}")
    for name in ("draft_vocab", "intermediate_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.feature_noise < 0:
        p.error(f"--feature-noise: must be >= 0, got {args.feature_noise}")
    if args.init and args.intermediate_size is not None:
        p.error("--intermediate-size: applies to a fresh head only, not with --init")
    return args


def new_head(target_dir: str, seed: int, draft_ids: torch.Tensor | None = None,
             intermediate_size: int | None = None) -> EagleHead:
    """A fresh head with the target's frozen embeddings and its LM head (or, with draft_ids, the
    target's LM head rows of those tokens as the head's own)."""
    torch.manual_seed(seed)
    cfg = load_model_config(target_dir)
    if intermediate_size is not None:
        cfg = dataclasses.replace(cfg, intermediate_size=intermediate_size)
    head = EagleHead(cfg, draft_ids=draft_ids)
    embed, lm_head = read_target_ends(target_dir, cfg.tie_word_embeddings)
    head.embed_tokens.weight.data.copy_(embed)
    head.lm_head.weight.data.copy_(lm_head if draft_ids is None else lm_head[draft_ids])
    return head


def most_frequent(stream: torch.Tensor, vocab_size: int, size: int, always: tuple = ()) -> torch.Tensor:
    """The `size` most frequent ids of stream (ids in `always` first), ascending (EAGLE-3's d2t order)."""
    if size > vocab_size:
        raise ValueError(f"--draft-vocab: {size} exceeds the target vocabulary ({vocab_size})")
    counts = torch.bincount(stream, minlength=vocab_size).float()
    counts[list(always)] = float("inf")
    return counts.topk(size).indices.sort().values


def with_draft_vocab(head: EagleHead, target_dir: str, draft_ids: torch.Tensor) -> EagleHead:
    """A head's trained fc and layer under a (new) reduced vocabulary, LM head rows from the target."""
    out = new_head(target_dir, 0, draft_ids, head.cfg.intermediate_size)
    own = {k: v for k, v in head.state_dict().items() if k.startswith(("fc.", "layer."))}
    out.load_state_dict(own, strict=False)
    return out


def eagle_loss(head: EagleHead, target, ids: torch.Tensor, ce_weight: float, return_parts: bool = False,
               noise: float = 0.0):
    with torch.no_grad():
        feats = target.model(input_ids=ids).last_hidden_state  # final-normed: what lm_head reads
        p = F.softmax(target.lm_head(feats[:, 1:]).float(), -1)
        inputs = feats[:, :-1]
        if noise and head.training:  # EAGLE's uniform input noise, scaled to the features
            inputs = inputs + (torch.rand_like(inputs) * 2 - 1) * (noise * inputs.std())
    pred = head.forward_dense(ids[:, 1:], inputs)
    v_loss = F.smooth_l1_loss(pred, feats[:, 1:])
    logq = F.log_softmax(head.lm_head(pred).float(), -1)
    p_draft = p[..., head.draft_ids] if head.reduced else p
    p_draft = p_draft / p_draft.sum(-1, keepdim=True).clamp_min(1e-12)
    p_loss = -(p_draft * logq).sum(-1).mean()
    if return_parts:
        top1 = (head.to_target(logq.argmax(-1)) == p.argmax(-1)).float().mean()
        return v_loss, p_loss, top1
    return v_loss + ce_weight * p_loss


@torch.no_grad()
def evaluate(head, target, chunks, ce_weight) -> dict:
    head.eval()
    v, p, top1 = eagle_loss(head, target, chunks, ce_weight, return_parts=True)
    return {"feature_smooth_l1": round(v.item(), 4), "ce": round(p.item(), 4),
            "top1_agreement_with_target": round(top1.item(), 4)}


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["minedraft", "train-eagle", *(sys.argv[2:] if argv is None else argv)])
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    target = load_checkpoint(Path(args.target)).requires_grad_(False)
    from minedraft.runner.hf_adapter import load_tokenizer

    tok = load_tokenizer(args.target).backend_tokenizer
    corpus = load_corpus(args.stdlib)
    stream = encode_stream(tok, [text for _, text in corpus.train])
    train_chunks = to_chunks(stream)
    eval_chunks = to_chunks(encode_stream(tok, [text for _, text in corpus.heldout]))[:16]
    print(f"[train-eagle] {len(train_chunks)} train windows, {len(eval_chunks)} held out; "
          f"data {time.perf_counter() - t0:.1f} s", flush=True)
    cfg = load_model_config(args.target)
    draft_ids = None
    if args.draft_vocab is not None:  # counted on the training corpus, EOS always in
        draft_ids = most_frequent(stream, cfg.vocab_size, args.draft_vocab, cfg.eos_token_ids)
        covered = torch.isin(stream, draft_ids).float().mean().item()
        print(f"[train-eagle] draft vocabulary {args.draft_vocab}: {covered:.4f} of the corpus tokens", flush=True)
    if args.init:
        head = load_head(args.init, args.target)
        if head.variant != "eagle1":
            raise SystemExit(f"train-eagle: --init {args.init} is an EAGLE-3 head; train-eagle trains EAGLE-1-layout "
                             "heads only (EAGLE-3 heads run, but are trained elsewhere)")
        if draft_ids is not None and not (head.reduced and torch.equal(head.draft_ids, draft_ids)):
            head = with_draft_vocab(head, args.target, draft_ids)
    else:
        head = new_head(args.target, args.seed, draft_ids, args.intermediate_size)
    gen = torch.Generator().manual_seed(args.seed)
    spec = TrainSpec("eagle", args.batch, args.lr, args.minutes * 60, args.steps, warmup_steps=20,
                     weight_decay=0.0, eval_every_s=args.minutes * 60 / 4)
    run = train(head, spec, train_chunks, gen,
                lambda x, _y: eagle_loss(head, target, x, args.ce_weight, noise=args.feature_noise),
                lambda: evaluate(head, target, eval_chunks, args.ce_weight))
    save_head(head, args.out, args.target)
    final = evaluate(load_head(args.out, args.target), target, eval_chunks, args.ce_weight)  # as users load it
    trained = sum(p.numel() for p in head.parameters() if p.requires_grad)
    log = {"command": command, "seed": args.seed, "target": args.target, "format": "EAGLE-1", "init": args.init,
           "draft_vocab_size": head.draft_vocab_size, "intermediate_size": head.cfg.intermediate_size,
           "feature_noise": args.feature_noise,
           "loss": f"smooth_l1(feature) + {args.ce_weight} * CE(target p, lm_head(feature))",
           "params_trained": trained, "params_with_frozen_ends": n_params(head), **run,
           "heldout_final": final, "wall_s": round(time.perf_counter() - t0, 1)}
    log_path = Path(args.log) if args.log else Path(args.out) / "training-log.json"
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    print(f"[train-eagle] held-out {json.dumps(final)}; {trained} params; wall {log['wall_s']} s -> {args.out}",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
