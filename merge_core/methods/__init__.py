"""Merge methods, one module each, behind one signature: ``fn(op, vlm, llm, base, out=None) -> Tensor``.

Each method module declares its methods (:class:`~merge_core.methods.registry.MethodDef`: fields, family,
implementation per compat mode, mergekit name); :mod:`merge_core.methods.registry` collects them.
Inputs share dtype and device (the output dtype); the result has that dtype; with ``out`` the result is
written into it (the resident merger's live parameter).  :func:`merge_tensor` adds the shared-rows rule
for embeddings, so every caller gets the same bits.
"""

from __future__ import annotations

import torch

from merge_core.methods.registry import MergeFn, get
from merge_core.plan import TensorOp

__all__ = ["MergeFn", "implementation", "merge_tensor"]


def implementation(method: str, compat: str) -> MergeFn:
    """The function merging one tensor for ``method`` under ``compat`` (KeyError if it has none)."""
    return get(method).impls[compat]


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
    fn = implementation(op.method, op.compat)
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
