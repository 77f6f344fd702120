"""task_arithmetic (mergekit): out = base + λ·(a1·τ_vlm + a2·τ_llm) [/ (a1 + a2) if normalize], τ = θ - base.

In fp32, cast to the output dtype once at the end; no sparsification.
"""

from __future__ import annotations

import torch

from merge_core.methods.engine import Selector, merge_task_vectors
from merge_core.methods.registry import MethodDef, normalize, task_weights
from merge_core.plan import TensorOp


def merge(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """base + λ·Σ a_i τ_i (normalised by Σ a_i when ``op.normalize``)."""
    return merge_task_vectors(op, vlm, llm, base, out, (Selector(), Selector()), consensus=False)


METHODS = (
    MethodDef(
        "task_arithmetic", "task_vector", (*task_weights(), normalize(False)), {"mergekit": merge},
        mergekit="task_arithmetic", order=10,
    ),
)  # fmt: skip
