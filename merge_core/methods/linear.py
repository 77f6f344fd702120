"""linear: out = (1 - w)·VLM + w·LLM, w = the (scheduled) LLM weight.

Computed as ``torch.lerp(vlm, llm, w)`` in the tensor's dtype: lerp's internal math is fp32 for bf16/fp16
(opmath), so this equals an fp32 lerp rounded once, and it can write straight into the live parameter.
For two models this is mergekit's normalised linear merge sum(w_i·θ_i)/sum(w_i) with weights (1-w, w).
"""

from __future__ import annotations

import torch

from merge_core.methods import compat_vlm_merging
from merge_core.methods.engine import one_thread
from merge_core.methods.registry import MethodDef, weight
from merge_core.plan import TensorOp


def merge(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """lerp(vlm, llm, op.weight), into ``out`` when given."""
    assert op.weight is not None
    with one_thread(
        vlm.device
    ):  # see engine.one_thread: one memory-bound pass gains little from a 2nd thread
        if out is None:
            return torch.lerp(vlm, llm, op.weight)
        return torch.lerp(vlm, llm, op.weight, out=out)


METHODS = (
    MethodDef(
        "linear", "linear", (weight(),),
        {"mergekit": merge, "vlm_merging": compat_vlm_merging.merge_linear},
        mergekit="linear", order=0,
    ),
)  # fmt: skip
