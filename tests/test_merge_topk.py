"""TIES's exact top-k (merge_core.methods.engine.Magnitude): the radix selection against a stable sort.

The reference keeps the k = int(density·n) largest |τ| with ties broken by the lower index first, by
``torch.argsort(|τ|, descending=True, stable=True)[:k]`` on the fp32 task vector — no merge_core code.
"""

from __future__ import annotations

import pytest
import torch

from merge_core.methods import engine
from merge_core.methods.engine import Magnitude, kth_largest_bits, whole_mask


def sort_keep(theta: torch.Tensor, base: torch.Tensor, density: float) -> torch.Tensor:
    tau = (theta.float() - base.float()).reshape(-1)
    if density >= 1:
        return torch.ones(tau.numel(), dtype=torch.bool)
    k = int(density * tau.numel())
    keep = torch.zeros(tau.numel(), dtype=torch.bool)
    keep[torch.argsort(tau.abs(), descending=True, stable=True)[:k]] = True
    return keep


def trio(dtype: torch.dtype, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 0.02).to(dtype)
    # a few distinct steps (many ties), exact zeros, and continuous noise
    steps = torch.randint(-3, 4, (n,), generator=g).float() * 0.004
    noise = torch.randn(n, generator=g) * 0.001 * (torch.rand(n, generator=g) < 0.3)
    theta = (base.float() + steps + noise).to(dtype)
    return theta, base


N = 5003


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("density", [0.5 / N, 1.0 / N, 0.01, 0.2, 0.5, 0.77, (N - 1) / N, 1.0])
@pytest.mark.parametrize("cached", [True, False])
def test_magnitude_mask_equals_stable_sort(monkeypatch, dtype, density, cached):
    theta, base = trio(dtype, N, seed=int(density * 1000) + 7)
    if not cached:
        monkeypatch.setattr(engine, "BITS_CACHE", 0)  # the second pass recomputes |τ|
    want = sort_keep(theta, base, density)
    for chunk in (N, 1000, 7):
        monkeypatch.setattr(engine, "CPU_CHUNK", chunk)
        got = whole_mask(Magnitude(density), theta, base)
        if density >= 1.0:
            assert got is None  # keep everything
            continue
        assert got is not None
        assert int(got.sum()) == int(density * N), (dtype, density, chunk)
        assert torch.equal(got.reshape(-1).bool(), want), (dtype, density, chunk)


def test_kth_largest_bits_counts_against_sort():
    g = torch.Generator().manual_seed(3)
    values = (torch.randint(0, 50, (20011,), generator=g).float() * 0.125).abs()
    values[::97] = float("inf")
    srt = torch.sort(values, descending=True).values
    for k in (1, 2, 157, 10000, 20010, 20011):
        bits, above, equal = kth_largest_bits(lambda: [values.view(torch.int32)], k, values.device)
        t = srt[k - 1]
        assert torch.tensor([bits], dtype=torch.int32).view(torch.float32).item() == t.item()
        assert above == int((values > t).sum()) and equal == int((values == t).sum())


def test_magnitude_keeps_none_when_k_is_zero():
    theta, base = trio(torch.float32, 100, seed=1)
    got = whole_mask(Magnitude(0.005), theta, base)  # int(0.005 * 100) = 0
    assert got is not None and not got.any()
