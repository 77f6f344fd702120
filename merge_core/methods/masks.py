"""DARE keep-masks m ~ Bernoulli(density), one per (recipe seed, tensor, source), the same bits on every device.

``splitmix64`` (recipe schema ``mergesearch.recipe/v2``): a counter-based hash of the entry's index, computed
with int64 tensor ops on the tensor's own device.  Entry i of the flattened tensor (C order) reads 16-bit
lane i mod 4 (lane 0 = bits 0-15) of h_j, j = ⌊i / 4⌋, where

    h_j = mix(key + (j + 1)·γ mod 2^64),  γ = 0x9E3779B97F4A7C15,
    mix(z): z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31

(mod 2^64, logical shifts): h_j is output j of SplitMix64 (Steele, Lea & Flood 2014; Java's
``SplittableRandom``) seeded with ``key`` = :func:`merge_core.plan.mask_seed` (sha256 of seed, canonical
tensor name, source).  keep_i = (lane read as a signed int16) < ⌊density·2^16⌋ - 2^15, so
P(keep) = ⌊density·2^16⌋ / 2^16: within 2^-16 of density, far inside the sampling noise of any tensor
under 2^32 entries (sd √(d(1-d)/n)); 16-bit lanes give four entries per hash, which halves the cost of
32-bit lanes (measured) — see ``benchmarks/merge_throughput.py``.

Only integer ops with one defined result are used: add / multiply wrap modulo 2^64 (two's complement,
what torch's int64 kernels do on CPU and CUDA), ``>>`` on int64 is arithmetic, so the logical shift is
the arithmetic one masked to its low 64 - s bits; the int16 lanes are a view of the int64 words
(little-endian on every device torch runs on).  tests/test_merge_masks.py checks the bits against a
pure-Python implementation of the formula above.

``torch_cpu`` (schema v1 recipes, kept so they re-merge bit for bit): ``torch.rand(shape,
generator=CPU generator seeded with key) < density``, drawn on the CPU and moved to the device.
"""

from __future__ import annotations

import torch

ALGORITHMS: tuple[str, ...] = ("splitmix64", "torch_cpu")
LANES = 4  # 16-bit lanes per 64-bit hash
GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
# hashes per block: on the CPU 2^16 (two 512 KiB int64 temporaries; against 2^15, 0.82x the mask time
# over the benchmark's model, benchmarks/compare_revisions.py: fewer op calls per entry), 8 MB int64
# temporaries elsewhere (they stay in a GPU's L2 across the dozen ops of the hash)
CPU_BLOCK = 1 << 16
DEVICE_BLOCK = 1 << 20

_STEPS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _signed(x: int) -> int:
    """The int64 with the same low 64 bits as ``x``."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def lane_threshold(density: float) -> int:
    """The signed 16-bit lane bound: keep iff lane < ⌊density·2^16⌋ - 2^15 (density < 1)."""
    return min(int(density * 65536.0), 65535) - 32768


def _steps(device: torch.device, block: int) -> torch.Tensor:
    """[0, γ, 2γ, ...] (mod 2^64) for one block, cached per device."""
    key = (device, block)
    st = _STEPS.get(key)
    if st is None:
        st = _STEPS[key] = torch.arange(block, dtype=torch.int64, device=device).mul_(_signed(GAMMA))
    return st


def _mix_(z: torch.Tensor, tmp: torch.Tensor) -> None:
    """SplitMix64's finaliser in place (``tmp`` is scratch of the same shape)."""
    for shift, mult in ((30, MIX1), (27, MIX2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        tmp.bitwise_and_((1 << (64 - shift)) - 1)  # the arithmetic shift made logical
        z.bitwise_xor_(tmp)
        if mult is not None:
            z.mul_(_signed(mult))


def block_for(device: torch.device) -> int:
    """Hashes per block on ``device`` (the bits do not depend on it)."""
    return CPU_BLOCK if device.type == "cpu" else DEVICE_BLOCK


def splitmix64_mask(key: int, density: float, numel: int, device: torch.device) -> torch.Tensor:
    """Flat bool keep-mask of ``numel`` entries for ``key`` (see the module docstring), built on ``device``."""
    mask = torch.empty(numel, dtype=torch.bool, device=device)
    # the comparison writes its 0/1 bytes through a uint8 view of the bool mask: the same bytes (a bool is
    # one byte, 0 or 1), but torch's CPU kernel for a bool output is ~3x slower than for uint8 (measured)
    out8 = mask.view(torch.uint8)
    block = block_for(device)
    hashes = -(-numel // LANES)
    block = max(1, min(block, hashes))
    steps = _steps(device, block)
    z = torch.empty(block, dtype=torch.int64, device=device)
    tmp = torch.empty_like(z)
    bound = lane_threshold(density)
    for j0 in range(0, hashes, block):
        m = min(block, hashes - j0)
        zb, tb = z[:m], tmp[:m]
        torch.add(steps[:m], _signed(key + (j0 + 1) * GAMMA), out=zb)
        _mix_(zb, tb)
        s = j0 * LANES
        e = min(numel, s + m * LANES)
        torch.lt(zb.view(torch.int16)[: e - s], bound, out=out8[s:e])
    return mask


def torch_cpu_mask(key: int, density: float, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Flat bool keep-mask of schema v1: CPU ``torch.rand`` seeded with ``key``, moved to ``device``."""
    gen = torch.Generator(device="cpu").manual_seed(key)
    return (torch.rand(shape, generator=gen, dtype=torch.float32) < density).to(device).reshape(-1)


def keep_mask(algorithm: str, key: int, density: float, theta: torch.Tensor) -> torch.Tensor:
    """The flat keep-mask of ``theta``'s task vector by ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm == "splitmix64":
        return splitmix64_mask(key, density, theta.numel(), theta.device)
    if algorithm == "torch_cpu":
        return torch_cpu_mask(key, density, theta.shape, theta.device)
    raise ValueError(f"unknown DARE mask algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
