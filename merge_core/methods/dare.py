"""dare_ties and dare_linear (mergekit): random drop of task-vector entries, rescale, then combine.

τ'_i = rescale(τ_i·m_i), m_i ~ Bernoulli(density) from :mod:`merge_core.methods.masks` keyed by
:func:`merge_core.plan.mask_seed` (recipe seed, canonical tensor name, source): a counter-based hash built on
the tensor's device (schema v2), or schema v1's CPU ``torch.Generator`` — identical on every device and in
every process.  Rescale default ``l1`` (mergekit's
‖τ‖₁/‖τ·m‖₁); ``inverse_density`` is the DARE paper's 1/density.  dare_ties then elects signs as ``ties``;
dare_linear sums a_i·τ'_i (÷ Σ a_i if normalize).  out = base + λ·δ, fp32 until the final cast.
"""

from __future__ import annotations

import torch

from merge_core.methods import compat_vlm_merging
from merge_core.methods.engine import Random, merge_task_vectors
from merge_core.methods.registry import MethodDef, density, normalize, rescale, task_weights
from merge_core.plan import TensorOp


def _selectors(op: TensorOp) -> tuple[Random, Random]:
    assert op.density is not None
    return Random(op.density, op.seeds[0], op.mask), Random(op.density, op.seeds[1], op.mask)


def merge_ties(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """dare_ties for one tensor."""
    return merge_task_vectors(op, vlm, llm, base, out, _selectors(op), consensus=True)


def merge_linear(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """dare_linear for one tensor."""
    return merge_task_vectors(op, vlm, llm, base, out, _selectors(op), consensus=False)


METHODS = (
    MethodDef(
        "dare_ties", "task_vector", (*task_weights(), density(), normalize(False), rescale("l1")),
        {"mergekit": merge_ties, "vlm_merging": compat_vlm_merging.merge_dare_ties},
        mergekit="dare_ties", mergekit_model_params=("density",), mergekit_params=("rescale",), order=30,
    ),
    MethodDef(
        "dare_linear", "task_vector", (*task_weights(), density(), normalize(False), rescale("l1")),
        {"mergekit": merge_linear, "vlm_merging": compat_vlm_merging.merge_dare_linear},
        mergekit="dare_linear", mergekit_model_params=("density",), mergekit_params=("rescale",), order=40,
    ),
)  # fmt: skip
