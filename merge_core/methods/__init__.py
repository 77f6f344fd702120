"""Merge methods, one module each, behind one signature: ``fn(op, vlm, llm, base, out=None) -> Tensor``.

Inputs share dtype and device (the output dtype); the result has that dtype; with ``out`` the result is
written into it (the resident merger's live parameter).  :func:`merge_tensor` adds the shared-rows rule
for embeddings, so every caller gets the same bits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from merge_core.methods import compat_vlm_merging, dare, layer_swap, linear, task_arithmetic, ties
from merge_core.plan import TensorOp

MergeFn = Callable[..., torch.Tensor]

METHODS: dict[tuple[str, str], MergeFn] = {
    ("mergekit", "linear"): linear.merge,
    ("mergekit", "layer_swap"): layer_swap.merge,
    ("mergekit", "task_arithmetic"): task_arithmetic.merge,
    ("mergekit", "ties"): ties.merge,
    ("mergekit", "dare_ties"): dare.merge_ties,
    ("mergekit", "dare_linear"): dare.merge_linear,
    ("vlm_merging", "linear"): compat_vlm_merging.merge_linear,
    ("vlm_merging", "layer_swap"): compat_vlm_merging.merge_linear,
    ("vlm_merging", "ties"): compat_vlm_merging.merge_ties,
    ("vlm_merging", "dare_ties"): compat_vlm_merging.merge_dare_ties,
    ("vlm_merging", "dare_linear"): compat_vlm_merging.merge_dare_linear,
}


def merge_tensor(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge one tensor per ``op``; with ``op.rows`` only rows [:rows] are merged, the rest stay the VLM's.

    ``out`` may be ``vlm`` itself (the streamed merge does this): every method reads an element before
    writing it, and the task-vector selectors look at the whole tensor before the first write.
    """
    fn = METHODS[(op.compat, op.method)]
    rows = op.rows
    if rows is None or (
        rows == vlm.shape[0] and rows == llm.shape[0] and (base is None or rows == base.shape[0])
    ):
        return fn(op, vlm, llm, base, out)
    b = None if base is None else base[:rows]
    if out is None:
        out = vlm.clone()
    elif rows < vlm.shape[0] and out.data_ptr() != vlm.data_ptr():  # merging in place keeps those rows anyway
        out[rows:].copy_(vlm[rows:])
    fn(op, vlm[:rows], llm[:rows], b, out[:rows])
    return out
