"""Training loops of the toy world: batching of chat examples, the optimiser schedule, and the stages'
forward passes (text LM, VLM with precomputed or live image tokens, vision probe)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from objectives.toy.tasks import Example
from objectives.toy.vocab import IMAGE_PAD, PAD, TOKEN_ID, answer_ids, prompt_ids

IGNORE = -100


@dataclass(frozen=True)
class Schedule:
    """AdamW (betas 0.9/0.98) with linear warmup then cosine decay to ``floor`` x lr; grad-norm clip."""

    steps: int
    lr: float
    weight_decay: float = 0.01
    warmup: int = 50
    floor: float = 0.1
    clip: float = 1.0
    batch: int = 128

    def lr_at(self, step: int) -> float:
        """lr * step/warmup during warmup, then lr * (floor + (1-floor) * (1 + cos(pi * progress)) / 2)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class Batch:
    """Right-padded token ids, next-token targets (IGNORE where not trained) and each row's image code."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    images: list[int | None]


def encode(examples: list[Example], *, loss_on: str) -> Batch:
    """Chat-template ids of each example (see :func:`objectives.toy.vocab.prompt_ids`) with targets shifted
    by one: ``loss_on="answer"`` trains the assistant turn only, ``"all"`` every token after the first."""
    rows: list[list[int]] = []
    masks: list[list[bool]] = []
    for ex in examples:
        p, a = prompt_ids(ex.question, image=ex.image is not None), answer_ids(ex.answer)
        rows.append(p + a)
        masks.append([loss_on == "all"] * len(p) + [True] * len(a))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), TOKEN_ID[PAD], dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        tgt = torch.tensor(row[1:])
        keep = torch.tensor(mask[1:])
        targets[i, : len(row) - 1] = torch.where(keep, tgt, torch.full_like(tgt, IGNORE))
    return Batch(ids, targets, [ex.image for ex in examples])


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over the non-ignored targets."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def vlm_logits(vlm: nn.Module, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
    """Logits of Qwen2-VL with ``image_embeds`` (one row per ``<|image_pad|>``, in reading order) placed at the
    image tokens. One token per image puts it at a single M-RoPE position equal to its 1-D position, so plain
    positions reproduce the full forward (checked by the tests against ``model(**processor(...))``)."""
    lm = vlm.model.language_model
    embeds = lm.embed_tokens(input_ids)
    if image_embeds is not None:
        mask = (input_ids == TOKEN_ID[IMAGE_PAD]).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
    hidden = lm(inputs_embeds=embeds).last_hidden_state
    return vlm.lm_head(hidden)


def image_features(vlm: nn.Module, pixel_values: torch.Tensor, n_images: int) -> torch.Tensor:
    """The vision tower + merger output, one row per 28x28 image (4 patches each)."""
    grid = torch.tensor([[1, 2, 2]] * n_images, dtype=torch.long)
    return vlm.model.visual(pixel_values, grid_thw=grid).pooler_output


def run_stage(
    params: Iterable[nn.Parameter],
    schedule: Schedule,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    label: str,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> list[float]:
    """Optimise ``loss_fn(step)`` for ``schedule.steps`` steps; returns the loss curve."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=schedule.lr, betas=(0.9, 0.98), weight_decay=schedule.weight_decay)
    curve: list[float] = []
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(step)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, schedule.clip)
        opt.step()
        curve.append(float(loss.detach()))
        if progress is not None:
            progress(label, step + 1, schedule.steps, curve[-1])
    return curve


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """requires_grad on every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(trainable)


class ImagePool:
    """Pre-rendered training images grouped by code; ``pick`` draws one image index per requested code."""

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes
        self.by_code = {int(c): np.flatnonzero(codes == c) for c in np.unique(codes)}

    def pick(self, wanted: list[int | None], rng: np.random.Generator) -> list[int]:
        """Indices into the pool, one for each non-None code, in order."""
        out = []
        for code in wanted:
            if code is None:
                continue
            choices = self.by_code[int(code)]
            out.append(int(choices[int(rng.integers(0, len(choices)))]))
        return out
