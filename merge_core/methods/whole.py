"""Whole-tensor helpers of the methods that rank or weigh a task vector as a whole (della, breadcrumbs, sce).

All math in fp32 on the tensors' device; the result is rounded once to the output dtype.
"""

from __future__ import annotations

import torch

from merge_core.methods.engine import one_thread


def task_vectors(
    vlm: torch.Tensor, llm: torch.Tensor, base: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(base, τ_vlm, τ_llm) flattened, in fp32."""
    b = base.reshape(-1).to(torch.float32)
    return b, vlm.reshape(-1).to(torch.float32) - b, llm.reshape(-1).to(torch.float32) - b


def top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """fp32 0/1 mask of the k largest entries of ``score`` (ties: lowest index first)."""
    mask = torch.zeros_like(score, dtype=torch.float32)
    if k > 0:
        mask[torch.argsort(score, descending=True, stable=True)[:k]] = 1.0
    return mask


def l1_factor(tau: torch.Tensor, kept: torch.Tensor) -> torch.Tensor | float:
    """mergekit's L1 rescale ‖τ‖₁ / ‖τ·m‖₁ (float64 sums), 1 when either is below 1e-8."""
    before, after = tau.abs().sum(dtype=torch.float64), kept.abs().sum(dtype=torch.float64)
    return (before / after).to(torch.float32) if before >= 1e-8 and after >= 1e-8 else 1.0


def elect(
    u1: torch.Tensor, u2: torch.Tensor, w1: float | torch.Tensor, w2: float | torch.Tensor, normalize: bool
) -> torch.Tensor:
    """TIES sign election: s = +1 where u1 + u2 >= 0 else -1; δ = Σ [sign(u_i) = s]·u_i, ÷ Σ [..]·w_i (0 → 1)."""
    s = torch.where(u1 + u2 >= 0, 1.0, -1.0)
    k1, k2 = (torch.sign(u1) == s).to(torch.float32), (torch.sign(u2) == s).to(torch.float32)
    delta = k1 * u1 + k2 * u2
    if normalize:
        div = k1 * w1 + k2 * w2
        delta = delta / torch.where(div == 0, 1.0, div)
    return delta


def finish(
    b: torch.Tensor, delta: torch.Tensor, lam: float, like: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    """(base + λ·δ) in the shape and dtype of ``like``, rounded once, into ``out`` when given."""
    res = (b + delta * lam if lam != 1.0 else b + delta).view(like.shape)
    if out is None:
        return res.to(like.dtype)
    return out.copy_(res)


__all__ = ["elect", "finish", "l1_factor", "one_thread", "task_vectors", "top_k_mask"]
