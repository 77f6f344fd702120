"""breadcrumbs (Davari & Belilovsky 2023, "Model Breadcrumbs"; mergekit ``breadcrumbs``).

Per task vector τ_i = θ_i - base (fp32, n entries), ranked by |τ_i| (ties: lowest index first):
drop the largest n_top = int(gamma·n) (outliers) and the smallest n_bot = n - int(density·n) - n_top, so
int(density·n) entries survive; when n_bot < 0, n_top shrinks to n - int(density·n).  density ≥ 1 keeps
all.  τ'_i = rescale(τ_i·m_i) (default none, ``l1`` is mergekit's norm match, ``inverse_density`` 1/density);
δ = Σ a_i·τ'_i [÷ Σ a_i when normalize and |Σ a_i| ≥ 1e-8]; out = base + λ·δ, rounded once.
(mergekit's ``indices[n_bot:-n_top]`` keeps nothing when n_top = 0; here n_top = 0 keeps the top.)
"""

from __future__ import annotations

import torch

from merge_core.methods.registry import MethodDef, ParamDef, density, normalize, rescale, task_weights
from merge_core.methods.whole import finish, l1_factor, one_thread, task_vectors
from merge_core.plan import TensorOp


def breadcrumbs_mask(tau: torch.Tensor, dens: float, gamma: float) -> torch.Tensor:
    """fp32 0/1 mask keeping ranks [n_bot, n - n_top) of |τ| in ascending order (module docstring)."""
    n = tau.numel()
    if dens >= 1.0:
        return torch.ones_like(tau)
    keep = int(dens * n)
    n_top = min(int(gamma * n), n - keep)
    n_bot = n - keep - n_top
    order = torch.argsort(tau.abs(), stable=True)  # ascending; equal |τ|: lower index ranks lower
    mask = torch.zeros_like(tau)
    mask[order[n_bot : n - n_top]] = 1.0
    return mask


def merge(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Breadcrumbs-merge one tensor."""
    assert base is not None and op.density is not None
    gamma = float(op.param("gamma"))  # type: ignore[arg-type]
    with one_thread(vlm.device):
        b, t1, t2 = task_vectors(vlm, llm, base)
        delta = torch.zeros_like(b)
        for tau, a in ((t1, float(op.vlm_weight)), (t2, float(op.llm_weight))):
            kept = tau * breadcrumbs_mask(tau, op.density, gamma)
            if op.rescale == "l1":
                kept = kept * l1_factor(tau, kept)
            elif op.rescale == "inverse_density" and op.density < 1.0:
                kept = kept / op.density
            delta += a * kept
        total = float(op.vlm_weight) + float(op.llm_weight)
        if op.normalize and abs(total) >= 1e-8:
            delta = delta / total
        return finish(b, delta, 1.0 if op.lambda_ is None else float(op.lambda_), vlm, out)


def _check(v: dict) -> str | None:
    if v["density"] + v["gamma"] > 1.0 + 1e-12:
        return f"field 'gamma' ({v['gamma']:g}) + 'density' ({v['density']:g}) must be <= 1"
    return None


METHODS = (
    MethodDef(
        "breadcrumbs", "task_vector",
        (*task_weights(), density(), normalize(False), rescale("none"),
         ParamDef("gamma", lo=0.0, hi=1.0, default=0.01, searched=True, help="fraction of largest |τ| dropped")),
        {"mergekit": merge}, mergekit="breadcrumbs", mergekit_model_params=("density", "gamma"),
        check=_check, order=60,
    ),
)  # fmt: skip
