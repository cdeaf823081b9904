"""The training loop: losses (cross-entropy, distillation), AdamW with warmup and cosine decay to a step
or time budget, and the held-out evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minedraft.training.data import SEQ_LEN


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
