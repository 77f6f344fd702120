"""ties (mergekit): magnitude-prune each task vector, elect a sign, average the agreeing entries.

τ_i = θ_i - base (fp32); τ'_i = top-k(τ_i) (k = int(density·numel) exactly, rescaled per ``rescale``,
default none); u_i = a_i·τ'_i; s = sign(Σ u_i) with 0 → +1; keep_i = sign(u_i) == s (zeros never agree);
δ = Σ keep_i·u_i, divided by Σ keep_i·a_i (0 → 1) when normalize (default on); out = base + λ·δ.
"""

from __future__ import annotations

import torch

from merge_core.methods import compat_vlm_merging
from merge_core.methods.engine import Magnitude, merge_task_vectors
from merge_core.methods.registry import MethodDef, density, normalize, rescale, task_weights
from merge_core.plan import TensorOp


def merge(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """TIES-merge one tensor."""
    assert op.density is not None
    sel = (Magnitude(op.density), Magnitude(op.density))
    return merge_task_vectors(op, vlm, llm, base, out, sel, consensus=True)


METHODS = (
    MethodDef(
        "ties", "task_vector", (*task_weights(), density(), normalize(True), rescale("none")),
        {"mergekit": merge, "vlm_merging": compat_vlm_merging.merge_ties},
        mergekit="ties", mergekit_model_params=("density",), order=20,
    ),
)  # fmt: skip
