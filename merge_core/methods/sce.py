"""sce (Wan et al. 2024, FuseChat: "select, calculate, erase"; mergekit ``sce``).

u_i = a_i·(θ_i - base) in fp32 (a = vlm_weight, llm_weight; mergekit has a_i = 1).
Select: var_j = population variance of (u_1j, u_2j); keep the k = int(select_topk·#{j: var_j ≠ 0})
entries of largest variance (ties: lowest index first; select_topk ≥ 1 keeps all) in every u_i.
Calculate: w_i = mean_j(u'_ij²) / Σ_i mean_j(u'_ij²) (1/2 each when the sum is 0).
Erase: s_j = +1 if Σ_i u'_ij ≥ 0 else -1; e_ij = [sign(u'_ij) = s_j] (zeros never agree).
δ = Σ_i w_i e_i u'_i / Σ_i w_i e_i (0 → 1); out = base + λ·δ, rounded once.
"""

from __future__ import annotations

import torch

from merge_core.methods.registry import MethodDef, ParamDef, task_weights
from merge_core.methods.whole import finish, one_thread, task_vectors, top_k_mask
from merge_core.plan import TensorOp


def merge(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """SCE-merge one tensor."""
    assert base is not None
    topk = float(op.param("select_topk"))  # type: ignore[arg-type]
    with one_thread(vlm.device):
        b, t1, t2 = task_vectors(vlm, llm, base)
        u1, u2 = t1 * float(op.vlm_weight), t2 * float(op.llm_weight)
        if topk < 1.0:
            var = ((u1 - u2) * 0.5).square()  # population variance of two values
            keep = top_k_mask(var, int(topk * int(torch.count_nonzero(var))))
            u1, u2 = u1 * keep, u2 * keep
        m1, m2 = u1.square().mean(dtype=torch.float64), u2.square().mean(dtype=torch.float64)
        total = m1 + m2
        w1, w2 = ((m1 / total).to(torch.float32), (m2 / total).to(torch.float32)) if total > 0 else (0.5, 0.5)
        s = torch.where(u1 + u2 >= 0, 1.0, -1.0)
        e1, e2 = (torch.sign(u1) == s).to(torch.float32) * w1, (torch.sign(u2) == s).to(torch.float32) * w2
        div = e1 + e2
        delta = (u1 * e1 + u2 * e2) / torch.where(div == 0, 1.0, div)
        return finish(b, delta, 1.0 if op.lambda_ is None else float(op.lambda_), vlm, out)


METHODS = (
    MethodDef(
        "sce", "task_vector",
        (*task_weights(),
         ParamDef("select_topk", lo=0.0, hi=1.0, open_low=True, default=1.0, searched=True,
                  help="fraction of highest-variance entries kept")),
        {"mergekit": merge}, mergekit="sce", mergekit_params=("select_topk",), order=80,
    ),
)  # fmt: skip
