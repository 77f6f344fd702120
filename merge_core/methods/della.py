"""della (Deep et al. 2024, DELLA-Merging: MAGPRUNE; mergekit ``della``).

τ_i = θ_i - base in fp32, viewed as rows (dim 0; a vector is one row) of c entries.  Within each row,
r_j = rank of |τ_j| ascending from 0 (ties: lower index first); keep probability
p_j = density - ε + 2ε·r_j / (c - 1) (p_j = density when c = 1), i.e. drop probability 1 - p_j falls with
magnitude.  m_j ~ Bernoulli(p_j) from the DARE mask keys (:func:`merge_core.plan.mask_seed`): schema v2
keeps j iff lane_j < ⌊p_j·2^16⌋ - 2^15 with lane_j the 16-bit counter hash of
:mod:`merge_core.methods.masks`; schema v1 keeps j iff u_j < p_j with u = CPU ``torch.rand`` seeded by the
key.  τ'_i = τ_i·m_i rescaled by ``rescale``: ``inverse_density`` is the paper's 1/p_j per entry,
``l1`` (default) mergekit's ‖τ‖₁/‖τ·m‖₁, or none.  Then the TIES election on u_i = a_i·τ'_i, δ ÷ the agreeing
weight sum when normalize (default on), out = base + λ·δ, rounded once.  density ≥ 1 keeps all.
"""

from __future__ import annotations

import torch

from merge_core.methods import masks
from merge_core.methods.registry import MethodDef, ParamDef, density, normalize, rescale, task_weights
from merge_core.methods.whole import elect, finish, l1_factor, one_thread, task_vectors
from merge_core.plan import TensorOp


def keep_probabilities(tau: torch.Tensor, shape: torch.Size, dens: float, eps: float) -> torch.Tensor:
    """p_j of the module docstring for the flat ``tau`` of a tensor of ``shape``."""
    rows = tau.view(shape[0] if len(shape) >= 2 else 1, -1)
    c = rows.shape[1]
    if c == 1:
        return torch.full_like(tau, dens)
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(c, device=tau.device).expand_as(order))
    return ((dens - eps) + ranks.to(torch.float32) * (2.0 * eps / (c - 1))).reshape(-1)


def hash_lanes(key: int, numel: int, device: torch.device) -> torch.Tensor:
    """The signed 16-bit lanes of the counter hash (the values :func:`masks.splitmix64_mask` compares)."""
    hashes = -(-numel // masks.LANES)
    z = torch.arange(hashes, dtype=torch.int64, device=device).mul_(masks._signed(masks.GAMMA))
    z.add_(masks._signed(key + masks.GAMMA))
    masks._mix_(z, torch.empty_like(z))
    return z.view(torch.int16)[:numel]


def bernoulli_mask(algorithm: str, key: int, p: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """fp32 0/1 mask, entry j kept with probability p_j (module docstring), the same on every device."""
    if algorithm == "splitmix64":
        bound = (p * 65536.0).floor_().clamp_max_(65535.0).sub_(32768.0)
        return (hash_lanes(key, p.numel(), p.device).to(torch.float32) < bound).to(torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(key)
    u = torch.rand(shape, generator=gen, dtype=torch.float32).reshape(-1).to(p.device)
    return (u < p).to(torch.float32)


def merge(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """DELLA-merge one tensor."""
    assert base is not None and op.density is not None
    eps = float(op.param("epsilon"))  # type: ignore[arg-type]
    with one_thread(vlm.device):
        b, t1, t2 = task_vectors(vlm, llm, base)
        us = []
        for tau, a, key in ((t1, float(op.vlm_weight), op.seeds[0]), (t2, float(op.llm_weight), op.seeds[1])):
            kept = tau
            if op.density < 1.0:
                p = keep_probabilities(tau, vlm.shape, op.density, eps)
                kept = tau * bernoulli_mask(op.mask, key, p, vlm.shape)
                if op.rescale == "l1":
                    kept = kept * l1_factor(tau, kept)
                elif op.rescale == "inverse_density":
                    kept = kept / p
            us.append(kept * a)
        delta = elect(us[0], us[1], float(op.vlm_weight), float(op.llm_weight), bool(op.normalize))
        return finish(b, delta, 1.0 if op.lambda_ is None else float(op.lambda_), vlm, out)


def _check(v: dict) -> str | None:
    d, e = v["density"], v["epsilon"]
    if d < 1.0 and not (d - e > 0.0 and d + e < 1.0):
        return f"field 'epsilon' ({e:g}) must keep density ± epsilon inside (0, 1) (density {d:g})"
    return None


METHODS = (
    MethodDef(
        "della", "task_vector",
        (*task_weights(), density(), normalize(True), rescale("l1"),
         ParamDef("epsilon", lo=0.0, hi=0.5, default=0.0, searched=True, help="half-width of the keep probabilities")),
        {"mergekit": merge},
        mergekit="della", mergekit_model_params=("density", "epsilon"), mergekit_params=("rescale",),
        check=_check, order=70,
    ),
)  # fmt: skip
