"""della, breadcrumbs and sce: against references written from the papers' formulas (numpy, float64) and
from mergekit's definitions (mergekit is not installed here: its sparsify.py / sce.py semantics are
transcribed below), plus streamed == resident bit for bit and field-naming validation errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from merge_core import Recipe, RecipeError, ResidentMerger, merge_to_disk
from merge_core.methods import della, masks, merge_tensor
from merge_core.plan import TensorOp
from tests.test_merge_masks import splitmix64
from tests.tiny.models import cached_trio


def _trio(shape=(6, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base + torch.randn(shape, generator=g), base + torch.randn(shape, generator=g), base


def _op(method: str, **kw) -> TensorOp:
    d = {"vlm_weight": 0.8, "llm_weight": 1.1, "lambda_": 0.9, "seeds": (123, 456)}
    d.update(kw)
    return TensorOp(method=method, compat="mergekit", **d)


# ---- breadcrumbs -----------------------------------------------------------------------------------
def np_breadcrumbs_keep(tau: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """Paper: drop the top-gamma and the bottom so that density is kept, by |τ| (descending ranks here)."""
    n = tau.size
    keep_n = int(density * n)
    top = min(int(gamma * n), n - keep_n)
    ranks_desc = np.empty(n, dtype=np.int64)
    ranks_desc[np.argsort(-np.abs(tau), kind="stable")] = np.arange(n)
    return (ranks_desc >= top) & (ranks_desc < top + keep_n)


def mergekit_magnitude_outliers(tau: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """mergekit sparsify.magnitude_outliers (transcribed; its indices[n_bot:-n_top] needs n_top > 0)."""
    n = tau.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:
        n_top, n_bot = n_top + n_bot, 0
    idx = torch.sort(tau.abs().view(-1)).indices
    mask = torch.zeros_like(tau)
    mask.view(-1)[idx[n_bot:-n_top]] = 1
    return tau * mask


@pytest.mark.parametrize("density,gamma", [(0.5, 0.1), (0.3, 0.0), (0.9, 0.2), (1.0, 0.1)])
def test_breadcrumbs_matches_the_paper_formula(density, gamma):
    vlm, llm, base = _trio()
    op = _op("breadcrumbs", density=density, normalize=False, rescale="none", extra=(("gamma", gamma),))
    got = merge_tensor(op, vlm, llm, base)
    b = base.double().numpy().reshape(-1)
    delta = np.zeros_like(b)
    for th, a in ((vlm, 0.8), (llm, 1.1)):
        tau = th.double().numpy().reshape(-1) - b
        keep = np.ones(tau.size, bool) if density >= 1 else np_breadcrumbs_keep(tau, density, gamma)
        assert keep.sum() == (tau.size if density >= 1 else int(density * tau.size))
        delta += a * tau * keep
    np.testing.assert_allclose(got.double().numpy().reshape(-1), b + 0.9 * delta, rtol=1e-5, atol=1e-5)


def test_breadcrumbs_matches_mergekit_where_n_top_is_positive():
    vlm, llm, base = _trio((8, 16), seed=3)
    op = _op("breadcrumbs", density=0.4, normalize=True, rescale="none", extra=(("gamma", 0.05),))
    got = merge_tensor(op, vlm, llm, base)
    t1, t2 = (mergekit_magnitude_outliers(t - base, 0.4, 0.05) for t in (vlm, llm))
    want = base + 0.9 * (0.8 * t1 + 1.1 * t2) / (0.8 + 1.1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- sce -------------------------------------------------------------------------------------------
def mergekit_sce(deltas: torch.Tensor, base: torch.Tensor, topk: float) -> torch.Tensor:
    """mergekit merge_methods/sce.py's SCETask.execute (transcribed), deltas stacked on dim 0."""
    if topk < 1:
        var = torch.var(deltas, dim=0, unbiased=False)
        k = int(topk * torch.count_nonzero(var))
        mask = torch.zeros_like(var)
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k).indices] = 1
        deltas = deltas * mask
    w = [float(torch.sum(d**2)) / d.numel() for d in deltas]
    w = [x / sum(w) for x in w]
    weights = torch.tensor(w).view(-1, *([1] * (deltas.dim() - 1)))
    majority = (deltas.sum(0) >= 0).float() * 2 - 1
    ew = weights * (deltas.sign() == majority)
    div = ew.sum(0)
    div[div == 0] = 1
    return base + (deltas * ew).sum(0) / div


def np_sce(u1: np.ndarray, u2: np.ndarray, topk: float) -> np.ndarray:
    """FuseChat's select / calculate / erase on the weighted task vectors, float64."""
    u = np.stack([u1, u2])
    if topk < 1:
        var = u.var(axis=0)
        k = int(topk * np.count_nonzero(var))
        keep = np.zeros(var.size, bool)
        keep[np.argsort(-var, kind="stable")[:k]] = True
        u = u * keep
    w = (u**2).mean(axis=1)
    w = w / w.sum()
    s = np.where(u.sum(0) >= 0, 1.0, -1.0)
    e = (np.sign(u) == s) * w[:, None]
    div = e.sum(0)
    return (u * e).sum(0) / np.where(div == 0, 1.0, div)


@pytest.mark.parametrize("topk", [1.0, 0.5, 0.1])
def test_sce_matches_the_paper_formula_and_mergekit(topk):
    vlm, llm, base = _trio(seed=5)
    op = _op("sce", lambda_=None, vlm_weight=1.0, llm_weight=1.0, extra=(("select_topk", topk),))
    got = merge_tensor(op, vlm, llm, base)
    torch.testing.assert_close(got, mergekit_sce(torch.stack([vlm - base, llm - base]), base, topk))
    op2 = _op("sce", extra=(("select_topk", topk),))
    b = base.double().numpy().reshape(-1)
    u1 = 0.8 * (vlm.double().numpy().reshape(-1) - b)
    u2 = 1.1 * (llm.double().numpy().reshape(-1) - b)
    want = b + 0.9 * np_sce(u1, u2, topk)
    got2 = merge_tensor(op2, vlm, llm, base).double().numpy().reshape(-1)
    np.testing.assert_allclose(got2, want, rtol=1e-5, atol=1e-5)


# ---- della -----------------------------------------------------------------------------------------
def test_della_probabilities_match_mergekit_magprune():
    """mergekit della_magprune: ranks within rows, p = (d - ε) + 2ε·(rank - min)/(max - min)."""
    tau = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))
    ranks = torch.argsort(torch.argsort(tau.abs(), dim=1), dim=1).float() + 1
    lo, hi = ranks.min(1, keepdim=True).values, ranks.max(1, keepdim=True).values
    want = (0.5 - 0.2) + (ranks - lo) / (hi - lo) * 2 * 0.2
    got = della.keep_probabilities(tau.reshape(-1), tau.shape, 0.5, 0.2).view(5, 9)
    torch.testing.assert_close(got, want)


def test_della_mask_is_the_dare_counter_hash_with_per_entry_bounds():
    key, n = 987654321, 37
    p = torch.linspace(0.05, 0.95, n)
    got = della.bernoulli_mask("splitmix64", key, p, torch.Size([n]))
    want = []
    for i in range(n):
        lane = (splitmix64(key, i // 4) >> (16 * (i % 4))) & 0xFFFF
        want.append(float((lane - 65536 if lane >= 32768 else lane) < int(float(p[i]) * 65536) - 32768))
    assert got.tolist() == want
    flat = torch.full((1000,), 0.3)
    same = della.bernoulli_mask("splitmix64", key, flat, torch.Size([1000])).bool()
    assert torch.equal(same, masks.splitmix64_mask(key, 0.3, 1000, torch.device("cpu")))


@pytest.mark.parametrize("rescale", ["inverse_density", "l1", "none"])
def test_della_matches_the_paper_formula(rescale):
    vlm, llm, base = _trio((4, 12), seed=7)
    d, eps = 0.5, 0.3
    op = _op("della", density=d, normalize=True, rescale=rescale, extra=(("epsilon", eps),))
    got = merge_tensor(op, vlm, llm, base).double().numpy().reshape(-1)
    b = base.double().numpy().reshape(-1)
    us = []
    for th, a, key in ((vlm, 0.8, 123), (llm, 1.1, 456)):
        tau = (th.double().numpy() - base.double().numpy())
        rank = np.argsort(np.argsort(np.abs(tau), axis=1, kind="stable"), axis=1, kind="stable")
        p = (d - eps + 2 * eps * rank / (tau.shape[1] - 1)).reshape(-1).astype(np.float32)
        m = della.bernoulli_mask("splitmix64", key, torch.from_numpy(p), vlm.shape).numpy()
        t = tau.reshape(-1)
        kept = t * m
        if rescale == "inverse_density":
            kept = kept / p
        elif rescale == "l1":
            kept = kept * (np.abs(t).sum() / np.abs(kept).sum())
        us.append(a * kept)
    s = np.where(us[0] + us[1] >= 0, 1.0, -1.0)
    k = [np.sign(u) == s for u in us]
    div = k[0] * 0.8 + k[1] * 1.1
    want = b + 0.9 * (k[0] * us[0] + k[1] * us[1]) / np.where(div == 0, 1.0, div)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- recipes, streamed == resident -----------------------------------------------------------------
NEW = [
    {"method": "della", "density": 0.6, "epsilon": 0.2, "seed": 4},
    {"method": "della", "density": 0.5, "epsilon": 0.1, "schema": "mergesearch.recipe/v1"},
    {"method": "breadcrumbs", "density": 0.5, "gamma": 0.05, "components": ["attention", "mlp", "embed"]},
    {"method": "sce", "select_topk": 0.4, "llm_weight": 0.7, "schedule": {"shape": "linear"}},
]


def test_new_methods_streamed_equals_resident_bit_for_bit(tmp_path_factory, tmp_path):
    trio = cached_trio(tmp_path_factory, "qwen2_vl", vlm_extra_vocab=3)
    merger = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base), report=None)
    pristine = {k: v.detach().clone() for k, v in merger.model.named_parameters()}
    for i, d in enumerate(NEW):
        recipe = Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base), **d})
        assert Recipe.from_dict(recipe.to_dict()) == recipe
        out = merge_to_disk(recipe, tmp_path / f"m{i}", progress=False)
        streamed = dict(AutoModelForImageTextToText.from_pretrained(out).named_parameters())
        merger.apply(recipe)
        live = dict(merger.model.named_parameters())
        for k in live:
            assert torch.equal(live[k].detach(), streamed[k].detach()), (d["method"], k)
        assert any(not torch.equal(live[k].detach(), pristine[k]) for k in live), "nothing merged"


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"method": "della", "epsilon": 0.7}, "'epsilon' must be a number in"),
        ({"method": "della", "density": 0.9, "epsilon": 0.2}, "'epsilon'"),
        ({"method": "breadcrumbs", "gamma": -0.1}, "'gamma' must be a number in"),
        ({"method": "breadcrumbs", "density": 0.9, "gamma": 0.2}, "'gamma'"),
        ({"method": "sce", "select_topk": 0.0}, "'select_topk' must be a number in"),
        ({"method": "sce", "density": 0.5}, "'density' does not apply to method 'sce'"),
        ({"method": "ties", "epsilon": 0.1}, "'epsilon' does not apply to method 'ties' .it applies to della"),
        ({"method": "della", "compat": "vlm_merging"}, "'compat' 'vlm_merging' has no della"),
    ],
)
def test_out_of_range_fields_are_named(fields, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict({"vlm": "v", "llm": "l", "base": "b", **fields})


# ---- against mergekit itself, where it is installed ------------------------------------------------
def test_breadcrumbs_and_della_agree_with_installed_mergekit(monkeypatch):
    sparsify = pytest.importorskip("mergekit.sparsify")
    from merge_core.methods.breadcrumbs import breadcrumbs_mask

    tau = torch.randn(6, 20, generator=torch.Generator().manual_seed(11))
    theirs = sparsify.magnitude_outliers(tau, density=0.4, gamma=0.05)
    ours = tau.reshape(-1) * breadcrumbs_mask(tau.reshape(-1), 0.4, 0.05)
    assert torch.equal(ours.view_as(tau), theirs)
    seen = []
    monkeypatch.setattr(torch, "bernoulli", lambda p: seen.append(p.clone()) or torch.ones_like(p))
    sparsify.della_magprune(tau, density=0.5, epsilon=0.2)
    torch.testing.assert_close(della.keep_probabilities(tau.reshape(-1), tau.shape, 0.5, 0.2).view_as(tau), seen[0])
