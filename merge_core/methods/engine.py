"""Chunked generalized task arithmetic: the shared engine of task_arithmetic, ties, dare_ties, dare_linear.

Per entry (mergekit's definitions, two sources VLM / LLM with weights a1, a2):
    τ_i = θ_i - base (fp32);  τ'_i = rescale(τ_i · m_i)  (m_i from the source's selector, if any);
    u_i = a_i · τ'_i;
    consensus: s = sign(Σ u_i) (0 → +1), keep_i = sign(u_i) == s, δ = Σ keep_i·u_i [÷ Σ keep_i·a_i, 0 → 1];
    otherwise: δ = Σ u_i [÷ Σ a_i when |Σ a_i| ≥ 1e-8];
    out = (base + λ·δ) cast to the output dtype.

Every step is elementwise once the selectors are resolved, so the work runs over cache-sized chunks of
the flattened tensors (CPU) — a handful of small temporaries instead of a dozen tensor-sized ones — and the
result is written straight into ``out`` (the resident model's parameter) when given.  Chunking does not
change any value: the ops per element are the same whatever the chunk size.  The magnitude selector finds
its exact top-k threshold with a two-pass radix histogram over the chunks (see :class:`Magnitude`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator

import torch

from merge_core.methods.masks import keep_mask
from merge_core.plan import TensorOp

CPU_CHUNK = 1 << 17  # elements; 512 KiB of fp32 per temporary keeps the working set in L2


_THREADS_LOCK = threading.Lock()
_THREADS = {"depth": 0, "saved": 0}


@contextlib.contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run the chunk loops single-threaded on CPU.

    A cache-sized chunk is too small to share between threads: each op would end in a barrier, and on a
    busy machine a descheduled worker thread stalls every one of them (measured here: 20x slower with
    2 threads on a loaded 2-core machine than with 1).  torch's thread count is process-wide, so nested
    and concurrent uses (the streamed merge merges two tensors at once) share one setting: the first in
    sets it to 1, the last out restores it.
    """
    if device.type != "cpu":
        yield
        return
    with _THREADS_LOCK:
        if _THREADS["depth"] == 0:
            _THREADS["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS["depth"] -= 1
            if _THREADS["depth"] == 0:
                torch.set_num_threads(_THREADS["saved"])


def chunks(n: int, device: torch.device) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges covering n elements: cache-sized on CPU, one range on accelerators."""
    step = CPU_CHUNK if device.type == "cpu" else max(n, 1)
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _tau(theta: torch.Tensor, base_f32: torch.Tensor) -> torch.Tensor:
    return theta.to(torch.float32) - base_f32  # a new tensor: inputs are never written


class Workspace:
    """fp32 scratch buffers of one chunk's length, reused by every chunk of a merge.

    Writing each op's result into a buffer (``out=`` / in-place) instead of a fresh tensor saves an
    allocation per op: a fresh 512 KiB block is a new mapping whose pages fault in one by one unless the
    allocator was tuned (:func:`merge_core.io.keep_freed_memory`), which the resident merger does not do.
    """

    NAMES = ("b", "t1", "t2", "w1", "w2", "w3")

    def __init__(self, n: int, device: torch.device) -> None:
        size = max(1, next(iter(chunks(n, device)), (0, 1))[1])
        self.bufs = {k: torch.empty(size, dtype=torch.float32, device=device) for k in self.NAMES}
        self.ones = torch.ones(size, dtype=torch.float32, device=device)
        self.device = device
        self.sel: dict[str, torch.Tensor] = {}

    def get(self, name: str, m: int) -> torch.Tensor:
        """Buffer ``name``'s first m entries."""
        return self.bufs[name][:m]

    def tau(self, name: str, theta: torch.Tensor, b32: torch.Tensor) -> torch.Tensor:
        """θ (one chunk, any float dtype) - base (fp32) into buffer ``name``: the same bits as :func:`_tau`."""
        t = self.bufs[name][: theta.numel()]
        return t.copy_(theta).sub_(b32)

    def base(self, base: torch.Tensor) -> torch.Tensor:
        """One chunk of the base in fp32."""
        return self.bufs["b"][: base.numel()].copy_(base)

    def select_buf(self, name: str, m: int, dtype: torch.dtype) -> torch.Tensor:
        """A selection-pass buffer ``name`` of at least m entries (made on first use, then shared by both
        sources' selectors), its first m entries."""
        buf = self.sel.get(name)
        if buf is None or buf.numel() < m or buf.dtype != dtype:
            buf = self.sel[name] = torch.empty(m, dtype=dtype, device=self.device)
        return buf[:m]

    def select_cache(self, n: int) -> torch.Tensor:
        """An fp32 buffer of n entries for |τ| between the two selection passes (one per merge: the two
        sources' selections run one after the other)."""
        return self.select_buf("cache", n, torch.float32)


class Selector:
    """Which entries of one source's task vector survive; ``keep`` is called chunk by chunk, in order."""

    def prepare(self, theta: torch.Tensor, base: torch.Tensor, ws: Workspace | None = None) -> None:
        """Look at the whole task vector once (if needed) before the chunked merge."""

    def keep(self, s: int, e: int, tau: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """0/1 fp32 mask of chunk [s, e) given its task vector (into ``out`` if given); None = keep all."""
        return None

    def rewind(self) -> None:
        """Start a new in-order pass over the chunks."""


BITS_CACHE = 1 << 24  # entries: up to 64 MB of |τ| kept between the two selection passes
SELECT_SCALE = 8  # the selection passes' chunks are this many merge chunks (2^20 entries on the CPU)


def select_chunks(n: int, device: torch.device) -> Iterator[tuple[int, int]]:
    """[start, stop) ranges of the selection passes: :data:`SELECT_SCALE` merge chunks each.

    Each ``bincount`` call zeroes and adds a whole histogram (256-512 KiB of int64) besides its entries:
    over a 2^17-entry chunk that is more memory traffic than the entries themselves, over 2^20 a tenth of
    it (measured: both passes 2.2-2.4x faster).  The ranges do not change any count.
    """
    step = CPU_CHUNK * SELECT_SCALE if device.type == "cpu" else max(n, 1)
    for s in range(0, n, step):
        yield s, min(n, s + step)


def kth_largest_bits(
    passes: Callable[[], Iterable[torch.Tensor]],
    k: int,
    device: torch.device,
    scratch: torch.Tensor | None = None,
) -> tuple[int, int, int]:
    """Radix selection of the k-th largest of non-negative fp32 values given as int32 bit patterns.

    ``passes()`` yields the values' bit patterns chunk by chunk; it is called twice.  1 <= k <= n.
    Returns (bits of the k-th largest value t, #entries > t, #entries == t).  Pass 1 counts the high 16
    bits (32768 buckets: the sign bit is 0) and finds the bucket B holding the k-th largest; pass 2 counts
    the low 16 bits of the entries in B: ``clamp(bits - (B·2^16 - 1), 0, 2^16 + 1)`` puts every entry below
    B in bin 0, above B in bin 2^16 + 1 and an entry of B in bin 1 + its low 16 bits — one subtraction and a
    clamp instead of selecting B's entries (a comparison and a boolean gather: 2.2x slower, measured).
    O(n); NaN patterns sort above +inf, as the bits do.  ``scratch``: an int32 buffer at least as long as
    the largest chunk, for the per-chunk temporaries (allocated per chunk otherwise).
    """

    def temp(bits: torch.Tensor) -> torch.Tensor | None:
        if scratch is None or scratch.numel() < bits.numel():
            return None
        return scratch[: bits.numel()]

    high_hist = torch.zeros(1 << 15, dtype=torch.int64, device=device)
    for bits in passes():
        high_hist += torch.bincount(torch.bitwise_right_shift(bits, 16, out=temp(bits)), minlength=1 << 15)
    counts = torch.cumsum(high_hist.flip(0), 0)  # counts[j] = #entries with high bits >= 32767 - j
    j = int(torch.searchsorted(counts, k))
    bucket = (1 << 15) - 1 - j
    above = int(counts[j - 1]) if j > 0 else 0
    low_hist = torch.zeros((1 << 16) + 2, dtype=torch.int64, device=device)
    for bits in passes():
        # bits - (B·2^16 - 1) can leave int32 only at bits = 2^31 - 1 with B = 0, which wraps to a negative
        # value and lands in bin 0: outside the bucket either way, as it is
        shifted = torch.sub(bits, (bucket << 16) - 1, out=temp(bits)).clamp_(0, (1 << 16) + 1)
        low_hist += torch.bincount(shifted, minlength=(1 << 16) + 2)
    low_hist = low_hist[1:-1]  # bins 1 .. 2^16: the entries of the bucket, by their low 16 bits
    counts2 = torch.cumsum(low_hist.flip(0), 0)
    j2 = int(torch.searchsorted(counts2, k - above))
    strictly_above = above + (int(counts2[j2 - 1]) if j2 > 0 else 0)
    equal = int(low_hist[(1 << 16) - 1 - j2])
    return (bucket << 16) | ((1 << 16) - 1 - j2), strictly_above, equal


class Magnitude(Selector):
    """Exactly k = int(density·n) entries of largest |τ|; ties at the threshold: lowest indices first.

    The threshold is found by radix selection over the fp32 bit pattern (which orders non-negative floats
    like their values), two O(n) histogram passes (:func:`kth_largest_bits`; |τ| is computed once and kept
    for the second pass up to :data:`BITS_CACHE` entries); the histograms also say how many entries equal
    to the threshold must be kept.  density ≥ 1 keeps all; k = 0 keeps none.
    """

    def __init__(self, density: float) -> None:
        self.density = density
        self.all = density >= 1.0
        self.threshold: torch.Tensor | None = None
        self.quota = self.quota0 = 0  # entries equal to the threshold still to keep, in index order
        self.ties_all = False  # every entry equal to the threshold is kept

    def prepare(self, theta: torch.Tensor, base: torch.Tensor, ws: Workspace | None = None) -> None:
        if self.all:
            return
        tf, bf = theta.reshape(-1), base.reshape(-1)
        n = tf.numel()
        k = int(self.density * n)
        if k <= 0:
            return
        dev = tf.device
        ws = ws or Workspace(n, dev)
        cache = ws.select_cache(n) if n <= BITS_CACHE else None
        filled = False

        def passes() -> Iterator[torch.Tensor]:
            nonlocal filled
            for s, e in select_chunks(n, dev):
                if filled:
                    yield cache[s:e].view(torch.int32)  # type: ignore[index]
                    continue
                a = ws.select_buf("abs", e - s, torch.float32) if cache is None else cache[s:e]
                a.copy_(tf[s:e]).sub_(ws.select_buf("base", e - s, torch.float32).copy_(bf[s:e])).abs_()
                yield a.view(torch.int32)
            filled = cache is not None

        scratch = ws.select_buf("bits", min(n, next(select_chunks(n, dev))[1]), torch.int32)
        value, strictly_above, equal = kth_largest_bits(passes, k, dev, scratch)
        self.threshold = torch.tensor([value], dtype=torch.int32, device=dev).view(torch.float32)[0]
        self.quota = self.quota0 = k - strictly_above  # >= 1: the k-th largest itself
        self.ties_all = self.quota == equal

    def rewind(self) -> None:
        """Start a new in-order pass over the chunks (the tie quota is consumed chunk by chunk)."""
        self.quota = self.quota0

    def keep(self, s: int, e: int, tau: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.all:
            return None
        if self.threshold is None:  # k = 0
            return torch.zeros_like(tau) if out is None else out.zero_()
        # float 0/1 masks from sign(|τ| - t): exact (x - y == 0 only if x == y, with gradual underflow)
        # and several times faster than comparisons producing bool tensors
        diff = torch.abs(tau, out=out) if out is not None else tau.abs()
        diff.sub_(self.threshold).sign_()
        if self.ties_all:
            return diff.add_(1.0).clamp_max_(1.0)  # |τ| >= t
        tied = None
        # before the clamp, 0 means |τ| == t; counting the zeros first (a float sum) spares the index scan
        # in every chunk but the one where the quota runs out: a chunk whose ties all fit in the quota
        # keeps them all (|τ| >= t), one that holds none keeps |τ| > t
        if self.quota > 0:
            ties = diff.numel() - int(diff.abs().sum())
            if 0 < ties <= self.quota:
                self.quota -= ties
                return diff.add_(1.0).clamp_max_(1.0)  # |τ| >= t
            if ties > 0:
                tied = (diff == 0).nonzero().reshape(-1)[: self.quota]
                self.quota -= tied.numel()
        mask = diff.clamp_min_(0.0)  # |τ| > t
        if tied is not None:
            mask[tied] = 1.0
        return mask


class Random(Selector):
    """DARE: keep each entry with probability density; the mask is built once per tensor on its device.

    ``algorithm`` picks the mask's definition (:mod:`merge_core.methods.masks`): ``splitmix64``, a
    counter-based hash computed on the tensor's device, or ``torch_cpu`` (schema v1 recipes).  Either way
    the mask is the same on every device.
    """

    def __init__(self, density: float, seed: int, algorithm: str = "splitmix64") -> None:
        self.density, self.seed, self.algorithm = density, seed, algorithm
        self.mask: torch.Tensor | None = None

    def prepare(self, theta: torch.Tensor, base: torch.Tensor, ws: Workspace | None = None) -> None:
        if self.density >= 1.0:
            return
        self.mask = keep_mask(self.algorithm, self.seed, self.density, theta)

    def keep(self, s: int, e: int, tau: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.mask is None:
            return None
        # as fp32 0/1: τ·m is then one same-dtype product (a bool operand takes a slower mixed-dtype path);
        # converted from the bool bytes viewed as uint8 (same values), ~5x faster on the CPU than from bool
        m = self.mask[s:e].view(torch.uint8)
        return m.to(torch.float32) if out is None else out.copy_(m)


def _l1_factors(
    sel: Selector, theta: torch.Tensor, base: torch.Tensor, ws: Workspace
) -> float | torch.Tensor:
    """mergekit's L1 rescale factor ‖τ‖₁ / ‖τ·m‖₁ (float64 sums), 1 when either is below 1e-8."""
    tf, bf = theta.reshape(-1), base.reshape(-1)
    before = torch.zeros((), dtype=torch.float64, device=tf.device)
    after = torch.zeros((), dtype=torch.float64, device=tf.device)
    for s, e in chunks(tf.numel(), tf.device):
        tau = ws.tau("t1", tf[s:e], ws.base(bf[s:e]))
        m = sel.keep(s, e, tau, ws.get("w1", e - s))
        before += tau.abs().sum(dtype=torch.float64)
        after += (tau if m is None else tau.mul_(m)).abs_().sum(dtype=torch.float64)
    if before >= 1e-8 and after >= 1e-8:
        return (before / after).to(torch.float32)
    return 1.0


def merge_task_vectors(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor | None,
    out: torch.Tensor | None,
    selectors: tuple[Selector, Selector],
    *,
    consensus: bool,
) -> torch.Tensor:
    """The formula in the module docstring, chunked; writes into ``out`` (or a new tensor) and returns it."""
    assert base is not None
    with one_thread(vlm.device):
        return _merge_task_vectors(op, vlm, llm, base, out, selectors, consensus=consensus)


def _merge_task_vectors(
    op: TensorOp,
    vlm: torch.Tensor,
    llm: torch.Tensor,
    base: torch.Tensor,
    out: torch.Tensor | None,
    selectors: tuple[Selector, Selector],
    *,
    consensus: bool,
) -> torch.Tensor:
    a1, a2 = float(op.vlm_weight), float(op.llm_weight)
    lam = 1.0 if op.lambda_ is None else float(op.lambda_)
    rescale = op.rescale or "none"
    thetas = (vlm, llm)
    ws = Workspace(vlm.numel(), vlm.device)
    for sel, theta in zip(selectors, thetas, strict=True):
        sel.prepare(theta, base, ws)
    factors: list[float | torch.Tensor] = [1.0, 1.0]
    if rescale == "l1":
        factors = [_l1_factors(sel, th, base, ws) for sel, th in zip(selectors, thetas, strict=True)]
        for sel in selectors:
            sel.rewind()
    result = out if out is not None else torch.empty(vlm.shape, dtype=vlm.dtype, device=vlm.device)
    if not result.is_contiguous():
        raise ValueError("merge output must be contiguous")
    rf, bf = result.view(-1), base.reshape(-1)
    vf, lf = vlm.reshape(-1), llm.reshape(-1)
    for s, e in chunks(vf.numel(), vf.device):
        m_ = e - s
        b = ws.base(bf[s:e])
        us = []
        for sel, th, factor, a, tn, wn in zip(
            selectors, (vf, lf), factors, (a1, a2), ("t1", "t2"), ("w1", "w2"), strict=True
        ):
            tau = ws.tau(tn, th[s:e], b)
            m = sel.keep(s, e, tau, ws.get(wn, m_))
            if m is not None:
                tau.mul_(m)
                if rescale == "l1":
                    tau.mul_(factor)
                elif rescale == "inverse_density":
                    tau.div_(op.density)
            us.append(tau if a == 1.0 else tau.mul_(a))  # x·1 is x, signed zeros and NaNs included
        u1, u2 = us
        if consensus:
            # keep_i = [sign(u_i) == s], s = +1 if Σu >= 0 else -1, as 0/1 floats: sign(u_i)·s is 1 when
            # they agree, -1 when they differ, 0 when u_i = 0; a total of -0.0 only arises when both u_i
            # are zero, so copysign(1, Σu) is the same election as mergekit's (Σu >= 0)
            majority = torch.add(u1, u2, out=ws.get("w3", m_))
            torch.copysign(ws.ones[:m_], majority, out=majority)
            keep1 = torch.sign(u1, out=ws.get("w1", m_)).mul_(majority).clamp_min_(0.0)
            keep2 = torch.sign(u2, out=ws.get("w2", m_)).mul_(majority).clamp_min_(0.0)
            delta = u1.mul_(keep1).add_(u2.mul_(keep2))
            if op.normalize:
                k1 = keep1 if a1 == 1.0 else keep1.mul_(a1)
                divisor = k1.add_(keep2 if a2 == 1.0 else keep2.mul_(a2))
                if min(a1, a2) >= 2.0**-126:  # both weights positive and normal in fp32
                    # a divisor is 0 only where both keeps are, and δ is then ±0: ±0 ÷ min(a1, a2) is the
                    # same ±0 as ±0 ÷ 1, and every other divisor (a1, a2 or a1 + a2) is >= min(a1, a2),
                    # so one clamp gives mergekit's 0 -> 1 result with no change elsewhere
                    divisor.clamp_min_(min(a1, a2))
                else:
                    fix = torch.sign(divisor, out=majority).abs_().neg_().add_(1.0)
                    divisor.add_(fix)  # 0 -> 1, others unchanged
                delta.div_(divisor)
        else:
            delta = u1.add_(u2)
            if op.normalize and abs(a1 + a2) >= 1e-8:
                delta.div_(a1 + a2)
        if lam != 1.0:
            delta.mul_(lam)
        rf[s:e].copy_(delta.add_(b))  # base + δ, rounded once to the output dtype
    return result


def whole_mask(sel: Selector, theta: torch.Tensor, base: torch.Tensor) -> torch.Tensor | None:
    """The selector's 0/1 mask over the whole tensor (for the compat formulas), None = keep all."""
    sel.prepare(theta, base)
    masks = []
    tf, bf = theta.reshape(-1), base.reshape(-1)
    for s, e in chunks(tf.numel(), tf.device):
        m = sel.keep(s, e, _tau(tf[s:e], bf[s:e].to(torch.float32)))
        if m is None:
            return None
        masks.append(m)
    return torch.cat(masks).view(theta.shape) if masks else torch.ones_like(theta, dtype=torch.float32)
