"""DARE masks (merge_core.methods.masks): bits against a pure-Python SplitMix64 written here, determinism
across block sizes and processes, and the Bernoulli rate (fixed keys: the checks are deterministic)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from merge_core.methods import masks

M64 = (1 << 64) - 1


def splitmix64(key: int, j: int) -> int:
    """Output j of SplitMix64 seeded with key, in Python integers (Steele, Lea & Flood 2014)."""
    z = (key + (j + 1) * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def reference_keep(key: int, density: float, n: int) -> list[bool]:
    """Entry i keeps iff 16-bit lane i % 4 of output i // 4, as a signed int16, is < floor(d·2^16) - 2^15."""
    bound = int(density * 65536) - 32768
    out = []
    for i in range(n):
        lane = (splitmix64(key, i // 4) >> (16 * (i % 4))) & 0xFFFF
        signed = lane - 65536 if lane >= 32768 else lane
        out.append(signed < bound)
    return out


def test_splitmix64_reference_known_values():
    # the published first outputs of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c / Java's
    # SplittableRandom): they pin the reference itself
    assert splitmix64(0, 0) == 0xE220A8397B1DCDAF
    assert splitmix64(0, 1) == 0x6E789E6AA1B965F4
    assert splitmix64(0, 2) == 0x06C45D188009454F


@pytest.mark.parametrize("key", [0, 1, 0x7FFF_FFFF_FFFF_FFFF, 1234567890123456789])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.9, 0.37])
def test_mask_bits_match_the_pure_python_reference(key, density):
    n = 301  # not a multiple of 4: the last hash fills only some lanes
    got = masks.splitmix64_mask(key, density, n, torch.device("cpu"))
    assert got.dtype == torch.bool and got.shape == (n,)
    assert got.tolist() == reference_keep(key, density, n)


def test_block_boundaries_and_block_sizes_do_not_change_the_bits(monkeypatch):
    key, n = 987654321, 4 * 37 + 3
    want = reference_keep(key, 0.3, n)
    for block in (1, 5, 8, 1 << 20):
        monkeypatch.setattr(masks, "CPU_BLOCK", block)
        assert masks.splitmix64_mask(key, 0.3, n, torch.device("cpu")).tolist() == want, block
    # a large mask: the device block size gives the CPU block size's bits
    n = 3 * masks.DEVICE_BLOCK // 2 + 7
    monkeypatch.setattr(masks, "CPU_BLOCK", 1 << 15)
    a = masks.splitmix64_mask(key, 0.3, n, torch.device("cpu"))
    monkeypatch.setattr(masks, "CPU_BLOCK", masks.DEVICE_BLOCK)
    b = masks.splitmix64_mask(key, 0.3, n, torch.device("cpu"))
    assert torch.equal(a, b)
    # and the sampled tail is the reference's
    tail = range(n - 40, n)
    assert a[n - 40 :].tolist() == [
        ((((splitmix64(key, i // 4) >> (16 * (i % 4))) & 0xFFFF) ^ 0x8000) - 0x8000)
        < int(0.3 * 65536) - 32768
        for i in tail
    ]


def test_block_size_per_device():
    assert masks.block_for(torch.device("cpu")) == masks.CPU_BLOCK
    assert masks.block_for(torch.device("cuda", 0)) == masks.DEVICE_BLOCK


def test_masks_are_identical_across_processes():
    code = (
        "import hashlib, torch; from merge_core.methods.masks import splitmix64_mask; "
        "m = splitmix64_mask(42, 0.3, 1_000_003, torch.device('cpu')); "
        "print(hashlib.sha256(m.numpy().tobytes()).hexdigest())"
    )
    here = masks.splitmix64_mask(42, 0.3, 1_000_003, torch.device("cpu"))
    digest = hashlib.sha256(here.numpy().tobytes()).hexdigest()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == digest


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9])
def test_bernoulli_rate_and_independence(density):
    n = 1 << 20
    m = masks.splitmix64_mask(2024, density, n, torch.device("cpu"))
    p = int(density * 65536) / 65536
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(m.double().mean().item() - p) < 6 * sd  # a fixed key: deterministic, 6 sd is no flake
    x = m.double() - p
    for lag in (1, 2, 4, 1024):  # neighbouring lanes of one hash and of the next hashes are uncorrelated
        corr = (x[:-lag] * x[lag:]).mean().item() / (p * (1 - p))
        assert abs(corr) < 6 / n**0.5, lag
    other = masks.splitmix64_mask(2025, density, n, torch.device("cpu"))
    both = (m & other).double().mean().item()
    assert abs(both - p * p) < 6 * (p * p * (1 - p * p) / n) ** 0.5  # another key: an independent mask


def test_density_edges():
    n = 4096
    assert not masks.splitmix64_mask(7, 1 / 70000, n, torch.device("cpu")).any()  # below 2^-16: none kept
    high = masks.splitmix64_mask(7, 0.99999, n, torch.device("cpu"))
    assert high.float().mean() > 0.999
    assert masks.lane_threshold(0.99999999) == 32767  # the bound stays in int16


def test_schema_v1_mask_is_the_cpu_generator():
    shape = torch.Size([17, 9])
    got = masks.keep_mask("torch_cpu", 99, 0.4, torch.zeros(shape))
    want = torch.rand(shape, generator=torch.Generator().manual_seed(99)) < 0.4
    assert torch.equal(got, want.reshape(-1))
    with pytest.raises(ValueError, match="unknown DARE mask algorithm"):
        masks.keep_mask("philox", 1, 0.5, torch.zeros(3))
