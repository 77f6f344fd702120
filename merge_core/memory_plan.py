"""The memory plan of a :class:`~merge_core.resident.ResidentMerger`, from safetensors headers alone.

Two tiers for the merge sources (the pristine VLM language-model tensors, the LLM's and the base's):

- ``device``: all three are copies on the device, next to the model — no reads per trial;
- ``host``: none is kept; each ``apply`` streams them from the safetensors files (through the host's page
  cache, which every worker on the host shares) into a few staging buffers, tensor by tensor.

Only the tensors the search can touch are held: those whose component is in ``components``.  Bytes, with
s = the element size of the model dtype (integer tensors keep their own):

    model    = Σ over the VLM's tensors of numel·s            (what ``from_pretrained`` puts on the device)
    pristine = Σ over held VLM tensors of numel·s;  llm, base: the same over their partners' shapes
    buffers  = STAGED_ENTRIES · max over held tensors of (vlm + llm + base bytes)   (host tier only)
    scratch  = SCRATCH_BYTES_PER_ELEMENT · the largest chunk the merge engine works on (``engine.chunks``)
    device tier on the device = model + pristine + llm + base + scratch
    host tier on the device   = model + buffers + scratch
    left for generation       = free − on the device

``auto`` takes the device tier when its ``left`` is at least ``reserve`` (default
:data:`RESERVE_FRACTION` of the model, at least :data:`MIN_RESERVE`), else the host tier, else it is an
error.  Nothing here reads a weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from merge_core.errors import MergesearchError
from merge_core.io import ST_DTYPES, ST_ITEMSIZE, TensorSpec
from merge_core.methods.engine import chunks
from merge_core.tensor_map import TensorMap, VlmTensor

TIERS = ("device", "host", "auto")
# A streamed apply holds the entry being merged, the next one staged and the one after being read
# (merge_core.sources.stream_jobs; on a GPU only the first two are on the device)
STAGED_ENTRIES = 3
# fp32 temporaries the task-vector engine holds per element of a chunk (τ and u of both sources, the base,
# the two keep masks, the election and the divisor, plus the selector's work): an upper estimate, checked
# against the measured peak by benchmarks/gpu_check.py
SCRATCH_BYTES_PER_ELEMENT = 40
RESERVE_FRACTION = 0.25  # KV cache and activations of a proxy batch grow with the model
MIN_RESERVE = 256 << 20
GB = 1e9


class MemoryPlanError(MergesearchError):
    """The models do not fit the device in the tier asked for (or in any tier)."""


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _bytes(spec: TensorSpec, dtype: torch.dtype) -> int:
    src = ST_DTYPES[spec.dtype]
    size = dtype.itemsize if src.is_floating_point else ST_ITEMSIZE[spec.dtype]
    return _numel(spec.shape) * size


def held_tensors(tmap: TensorMap, components: Iterable[str]) -> list[VlmTensor]:
    """The VLM's language-model tensors whose component is in ``components`` (what a merger holds)."""
    held = set(components)
    return [t for t in tmap.tensors if t.where.canonical is not None and t.where.component in held]


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per tier on one device (see the module docstring for the formulas)."""

    device: str
    tier: str  # the tier chosen: "device" or "host"
    free: int
    reserve: int
    model: int
    pristine: int
    llm: int
    base: int
    buffers: int
    scratch: int

    def on_device(self, tier: str | None = None) -> int:
        """Bytes the tier puts on the device."""
        tier = tier or self.tier
        if tier == "device":
            return self.model + self.pristine + self.llm + self.base + self.scratch
        return self.model + self.buffers + self.scratch

    def left(self, tier: str | None = None) -> int:
        """Bytes left for generation in that tier."""
        return self.free - self.on_device(tier)

    def fits(self, tier: str | None = None) -> bool:
        return self.left(tier) >= self.reserve

    def summary(self) -> str:
        """One line: the GB per part, each tier's total and what is left for generation."""
        g = lambda n: f"{n / GB:.3g}"  # noqa: E731
        other = "host" if self.tier == "device" else "device"
        return (
            f"memory plan on {self.device} ({g(self.free)} GB free): sources = {self.tier!r}: "
            f"model {g(self.model)} GB, pristine {g(self.pristine)}, llm {g(self.llm)}, base {g(self.base)}"
            + (
                " (held on the device)"
                if self.tier == "device"
                else f" (streamed; buffers {g(self.buffers)})"
            )
            + f", merge scratch {g(self.scratch)}; {g(self.on_device())} GB on the device, "
            f"{g(self.left())} GB left for generation (reserve {g(self.reserve)}); "
            f"{other} tier: {g(self.on_device(other))} GB, {g(self.left(other))} left"
        )


def plan_memory(
    tmap: TensorMap,
    dtype: torch.dtype,
    components: Iterable[str],
    *,
    device: torch.device,
    free: int,
    sources: str = "auto",
    reserve: int | None = None,
) -> MemoryPlan:
    """The plan for ``sources`` ("device" | "host" | "auto") with ``free`` bytes on ``device``.

    Raises MemoryPlanError when the tier asked for (``auto``: either tier) leaves less than ``reserve``."""
    if sources not in TIERS:
        raise MemoryPlanError(f"sources {sources!r} is not one of {', '.join(TIERS)}")
    held = held_tensors(tmap, components)
    model = sum(_bytes(t.spec, dtype) for t in tmap.tensors)
    pristine = sum(_bytes(t.spec, dtype) for t in held)
    llm = sum(_bytes(tmap.llm.specs[t.llm_name], dtype) for t in held if t.llm_name is not None)
    base = 0
    if tmap.base is not None:
        base = sum(_bytes(tmap.base.specs[t.base_name], dtype) for t in held if t.base_name is not None)
    entry = 0
    largest = 0
    for t in held:
        b = _bytes(t.spec, dtype)
        if t.llm_name is not None:
            b += _bytes(tmap.llm.specs[t.llm_name], dtype)
        if tmap.base is not None and t.base_name is not None:
            b += _bytes(tmap.base.specs[t.base_name], dtype)
        entry = max(entry, b)
        largest = max(largest, _numel(t.spec.shape))
    chunk = next((e - s for s, e in chunks(largest, device)), 0)
    if reserve is None:
        reserve = max(MIN_RESERVE, int(RESERVE_FRACTION * model))
    plan = MemoryPlan(
        device=str(device), tier="device" if sources == "auto" else sources, free=free, reserve=reserve,
        model=model, pristine=pristine, llm=llm, base=base, buffers=STAGED_ENTRIES * entry,
        scratch=SCRATCH_BYTES_PER_ELEMENT * chunk,
    )  # fmt: skip
    if sources == "auto" and not plan.fits("device"):
        plan = _with_tier(plan, "host")
    if not plan.fits():
        raise MemoryPlanError(
            f"the models do not fit {device} with sources = {sources!r}: the device tier needs "
            f"{plan.on_device('device') / GB:.2f} GB and the host tier {plan.on_device('host') / GB:.2f} GB, "
            f"plus {reserve / GB:.2f} GB for generation, and {free / GB:.2f} GB are free; "
            "use sources = 'host', search fewer components (embed / lm_head are the largest), or a bigger device"
        )
    return plan


def _with_tier(plan: MemoryPlan, tier: str) -> MemoryPlan:
    import dataclasses

    return dataclasses.replace(plan, tier=tier)


def plan_for_checkpoints(
    vlm: str,
    llm: str,
    base: str | None,
    *,
    device: torch.device,
    dtype: str | None,
    components: Iterable[str],
    sources: str,
    workers: int = 1,
) -> MemoryPlan:
    """:func:`plan_memory` for checkpoint directories (headers only), with each of ``workers`` workers'
    share of the free memory (:func:`merge_core.devices.free_per_worker`): what a study checks first."""
    from merge_core.devices import free_per_worker
    from merge_core.io import DTYPE_NAMES, ModelFiles
    from merge_core.plan import output_dtype
    from merge_core.recipe import Recipe
    from merge_core.tensor_map import preflight

    files = [ModelFiles(vlm, "vlm"), ModelFiles(llm, "llm"), ModelFiles(base, "base") if base else None]
    try:
        tmap = preflight(*files)
        dt = DTYPE_NAMES[dtype] if dtype else output_dtype(Recipe(vlm=vlm, llm=llm), tmap)
        return plan_memory(
            tmap, dt, components, device=device, free=free_per_worker(device, workers), sources=sources
        )
    finally:
        for f in files:
            if f is not None:
                f.close()


# --- the vllm engine (objectives.engines.vllm_engine) ------------------------------------------------------
#
# vLLM keeps its own copy of the whole VLM and a KV cache; the update path (merge_core.updates.WeightUpdates)
# keeps the merge sources — pristine VLM, LLM and base tensors of the searched components — on the engine's
# device in the model dtype, outside vLLM's share, and merges there (the same scratch as above):
#
#     GPU: vllm = gpu_memory_utilization · total   (vLLM's share: weights, KV cache, activations);
#          kv   = vllm − model   (must be > 0, or vLLM has no room for a KV cache)
#     CPU: kv   = kv_cache_memory_bytes;  vllm = model + kv   (activations: ``reserve``, left free)
#     on the device = vllm + pristine + llm + base + scratch;   fits when free − on the device ≥ reserve


@dataclass(frozen=True)
class VllmMemoryPlan:
    """Bytes of the vllm engine on one device (formulas above); ``reserve`` is 0 on a GPU (inside vLLM's
    share)."""

    device: str
    free: int
    reserve: int
    model: int
    kv_cache: int
    pristine: int
    llm: int
    base: int
    scratch: int

    @property
    def vllm(self) -> int:
        """vLLM's own bytes: its weights and its KV cache."""
        return self.model + self.kv_cache

    def on_device(self) -> int:
        return self.vllm + self.pristine + self.llm + self.base + self.scratch

    def left(self) -> int:
        return self.free - self.on_device()

    def fits(self) -> bool:
        return self.kv_cache > 0 and self.left() >= self.reserve

    def summary(self) -> str:
        """One line: the GB per part, the total and what is left."""
        g = lambda n: f"{n / GB:.3g}"  # noqa: E731
        return (
            f"memory plan on {self.device} ({g(self.free)} GB free): engine 'vllm': weights {g(self.model)} GB, "
            f"KV cache {g(self.kv_cache)}; update sources: pristine {g(self.pristine)}, llm {g(self.llm)}, "
            f"base {g(self.base)}, merge scratch {g(self.scratch)}; {g(self.on_device())} GB on the device, "
            f"{g(self.left())} GB left (reserve {g(self.reserve)})"
        )


def plan_vllm_memory(
    tmap: TensorMap,
    dtype: torch.dtype,
    components: Iterable[str],
    *,
    device: torch.device,
    free: int,
    total: int | None = None,
    gpu_memory_utilization: float = 0.5,
    kv_cache_bytes: int = 64 << 20,
) -> VllmMemoryPlan:
    """The vllm engine's plan with ``free`` bytes on ``device`` (``total``: the accelerator's size, needed
    off the CPU). Raises MemoryPlanError (one line, before anything loads) when it cannot fit."""
    hf = plan_memory(tmap, dtype, components, device=device, free=1 << 62, sources="device", reserve=0)
    accelerator = device.type != "cpu"
    if accelerator:
        if total is None:
            raise MemoryPlanError(f"the vllm memory plan on {device} needs the device's total memory")
        kv = int(gpu_memory_utilization * total) - hf.model
        reserve = 0
    else:
        kv, reserve = kv_cache_bytes, MIN_RESERVE
    plan = VllmMemoryPlan(
        device=str(device), free=free, reserve=reserve, model=hf.model, kv_cache=kv, pristine=hf.pristine,
        llm=hf.llm, base=hf.base, scratch=hf.scratch,
    )  # fmt: skip
    if plan.kv_cache <= 0:
        raise MemoryPlanError(
            f"engine 'vllm' on {device}: gpu_memory_utilization {gpu_memory_utilization} gives vLLM "
            f"{gpu_memory_utilization * (total or 0) / GB:.2f} GB, less than the model's {plan.model / GB:.2f} GB "
            "of weights; raise objectives.vllm.gpu_memory_utilization or use a bigger device"
        )
    if not plan.fits():
        raise MemoryPlanError(
            f"engine 'vllm' does not fit {device}: vLLM {plan.vllm / GB:.2f} GB (weights + KV cache) plus "
            f"{(plan.pristine + plan.llm + plan.base + plan.scratch) / GB:.2f} GB of update sources and scratch, "
            f"plus {plan.reserve / GB:.2f} GB reserve, and {free / GB:.2f} GB are free; lower "
            "objectives.vllm.gpu_memory_utilization / kv_cache_mb, search fewer components, or use engine = 'hf'"
        )
    return plan


def total_memory(device: torch.device) -> int | None:
    """The accelerator's size in bytes (``torch.<type>.mem_get_info``); None for the CPU (no fixed share)."""
    if device.type == "cpu":
        return None
    _free, total = torch.get_device_module(device.type).mem_get_info(device)
    return int(total)


def plan_vllm_for_checkpoints(
    vlm: str,
    llm: str,
    base: str | None,
    *,
    device: torch.device,
    dtype: str | None,
    components: Iterable[str],
    workers: int = 1,
    gpu_memory_utilization: float = 0.5,
    kv_cache_bytes: int = 64 << 20,
) -> VllmMemoryPlan:
    """:func:`plan_vllm_memory` for checkpoint directories (headers only), each worker's share of the free
    memory (:func:`merge_core.devices.free_per_worker`): what a study with engine = "vllm" checks first."""
    from merge_core.devices import free_per_worker
    from merge_core.io import DTYPE_NAMES, ModelFiles
    from merge_core.plan import output_dtype
    from merge_core.recipe import Recipe
    from merge_core.tensor_map import preflight

    files = [ModelFiles(vlm, "vlm"), ModelFiles(llm, "llm"), ModelFiles(base, "base") if base else None]
    try:
        tmap = preflight(*files)
        dt = DTYPE_NAMES[dtype] if dtype else output_dtype(Recipe(vlm=vlm, llm=llm), tmap)
        return plan_vllm_memory(
            tmap, dt, components, device=device, free=free_per_worker(device, workers),
            total=total_memory(device), gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_bytes=kv_cache_bytes,
        )  # fmt: skip
    finally:
        for f in files:
            if f is not None:
                f.close()
