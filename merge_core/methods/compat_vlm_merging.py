"""``compat: "vlm_merging"``: the formulas of the paper repo's merge.py (VLM_Merging), quirks included.

Weights: ``weight`` = the LLM weight (their alpha = 1 - weight); a1 = vlm_weight, a2 = llm_weight
(their [alpha, alpha2]).  All fp32, cast once.
- base / layerswap: out = (1-w)·VLM + w·LLM as written there (two products and a sum, not a lerp).
- ties: τ'_i = top-k(τ_i) (no rescale); s = sign(Σ τ'_i) on the *unweighted* vectors, 0 → +1;
  keep_i = τ'_i ≠ 0 and sign(τ'_i) = s; δ = Σ keep_i·a_i·τ'_i / max(Σ keep_i, 1) (average by *count*).
- dare_linear: out = base + Σ a_i·τ_i·m_i, m_i ~ Bernoulli(density), *no* rescale (their division is lost).
- dare_ties: the same drop, then the ties election and count average.
Difference, on purpose: their DARE masks are unseeded (runs differ); here they are seeded per tensor like
the default mode, so a compat recipe is reproducible.
"""

from __future__ import annotations

import torch

from merge_core.methods.engine import Magnitude, Random, whole_mask
from merge_core.plan import TensorOp


def _finish(
    base_f32: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None
) -> torch.Tensor:
    result = (base_f32 + delta).to(dtype)
    return result if out is None else out.copy_(result)


def merge_linear(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha·VLM + (1-alpha)·LLM with alpha = 1 - weight."""
    assert op.weight is not None
    w = float(op.weight)
    result = (vlm.float() * (1.0 - w) + llm.float() * w).to(vlm.dtype)
    return result if out is None else out.copy_(result)


def _count_ties(op: TensorOp, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    s = torch.where(t1 + t2 >= 0, 1.0, -1.0)
    keep1 = (t1 != 0) & (torch.sign(t1) == s)
    keep2 = (t2 != 0) & (torch.sign(t2) == s)
    kept = t1 * keep1 * float(op.vlm_weight) + t2 * keep2 * float(op.llm_weight)
    count = keep1.to(torch.float32) + keep2.to(torch.float32)
    return kept / torch.clamp(count, min=1.0)


def merge_ties(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Their TIES: unweighted election, count average."""
    assert base is not None and op.density is not None
    b = base.float()
    taus = []
    for theta in (vlm, llm):
        tau = theta.float() - b
        mask = whole_mask(Magnitude(op.density), theta, base)
        taus.append(tau if mask is None else tau * mask)
    return _finish(b, _count_ties(op, taus[0], taus[1]), vlm.dtype, out)


def _dropped(op: TensorOp, vlm: torch.Tensor, llm: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    assert op.density is not None
    taus = []
    for theta, seed in zip((vlm, llm), op.seeds, strict=True):
        tau = theta.float() - b
        mask = whole_mask(Random(op.density, seed, op.mask), theta, b)
        taus.append(tau if mask is None else tau * mask)
    return taus


def merge_dare_linear(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Their dare_linear: no rescale."""
    assert base is not None
    b = base.float()
    t1, t2 = _dropped(op, vlm, llm, b)
    return _finish(b, t1 * float(op.vlm_weight) + t2 * float(op.llm_weight), vlm.dtype, out)


def merge_dare_ties(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Their dare_ties: drop without rescale, unweighted election, count average."""
    assert base is not None
    b = base.float()
    t1, t2 = _dropped(op, vlm, llm, b)
    return _finish(b, _count_ties(op, t1, t2), vlm.dtype, out)
