"""The memory plan, from headers alone: real-size trios built on the meta device, written header-only in
the hub's layout; the plan's bytes equal the parameter bytes of the models it plans for, tier choice."""

from __future__ import annotations

import pytest
import torch

from merge_core import ResidentMerger
from merge_core.devices import free_per_worker
from merge_core.io import ModelFiles
from merge_core.memory_plan import (
    MemoryPlanError,
    plan_for_checkpoints,
    plan_memory,
    plan_vllm_for_checkpoints,
    plan_vllm_memory,
    total_memory,
)
from merge_core.recipe import COMPONENTS, DEFAULT_COMPONENTS
from merge_core.tensor_map import preflight
from tests.real_shapes import FAMILIES, llm_config, meta_model, vlm_config, write_checkpoint
from tests.tiny.models import cached_trio

BF16 = 2
GPU = torch.device("cuda")  # the plan needs only the device type; nothing is allocated
LM_PREFIX = {
    "qwen2_5_vl": ("model.language_model.", "lm_head."),
    "llava_next": ("model.language_model.", "lm_head."),
    "idefics2": ("model.text_model.", "lm_head."),
}
COMPONENT_OF = (
    ("self_attn.", "attention"),
    ("mlp.", "mlp"),
    ("embed_tokens.", "embed"),
    ("lm_head.", "lm_head"),
)


def _component(name: str) -> str:
    for key, comp in COMPONENT_OF:
        if key in name:
            return comp
    assert "norm" in name, name
    return "norm"


def _bytes(model: torch.nn.Module, keep=lambda name: True) -> int:
    return sum(p.numel() * BF16 for n, p in model.named_parameters() if keep(n))


@pytest.fixture(scope="module")
def real_trios(tmp_path_factory):
    """Header-only real-size trios (sparse files: nothing but headers is written) and their meta models."""
    out = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(family)
        vm, lm = meta_model(vlm_config(family), True), meta_model(llm_config(family), False)
        write_checkpoint(root / "vlm", vlm_config(family), vm, family)
        write_checkpoint(root / "llm", llm_config(family), lm, None)
        write_checkpoint(root / "base", llm_config(family), lm, None)
        out[family] = (root, vm, lm)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("components", [COMPONENTS, DEFAULT_COMPONENTS, ("attention",)])
def test_plan_equals_the_parameter_bytes_it_plans_for(real_trios, family, components):
    root, vm, lm = real_trios[family]
    files = [ModelFiles(root / k, k) for k in ("vlm", "llm", "base")]
    tmap = preflight(*files)
    plan = plan_memory(tmap, torch.bfloat16, components, device=GPU, free=10**12, sources="device")
    held = set(components)
    lm_prefixes = LM_PREFIX[family]

    def vlm_held(n: str) -> bool:
        return n.startswith(lm_prefixes) and _component(n) in held

    assert plan.model == _bytes(vm)
    assert plan.pristine == _bytes(vm, vlm_held)
    assert plan.llm == plan.base == _bytes(lm, lambda n: _component(n) in held)
    assert (
        plan.tier == "device"
        and plan.on_device() == plan.model + plan.pristine + plan.llm + plan.base + plan.scratch
    )
    if components == COMPONENTS:  # the figures: the model plus three copies of its LM, 60-66 GB
        assert 59e9 < plan.model + plan.pristine + plan.llm + plan.base < 67e9


def test_auto_picks_the_tier_that_fits_and_refuses_what_cannot(real_trios):
    root, _, _ = real_trios["qwen2_5_vl"]
    tmap = preflight(*[ModelFiles(root / k, k) for k in ("vlm", "llm", "base")])
    probe = plan_memory(tmap, torch.bfloat16, COMPONENTS, device=GPU, free=10**12, sources="device")
    need_device = probe.on_device("device") + probe.reserve
    need_host = probe.on_device("host") + probe.reserve
    assert need_host < need_device
    for free, tier in ((need_device, "device"), (need_device - 1, "host"), (need_host, "host")):
        assert (
            plan_memory(tmap, torch.bfloat16, COMPONENTS, device=GPU, free=free, sources="auto").tier == tier
        )
    with pytest.raises(MemoryPlanError, match="do not fit cuda with sources = 'auto'.*GB"):
        plan_memory(tmap, torch.bfloat16, COMPONENTS, device=GPU, free=need_host - 1, sources="auto")
    with pytest.raises(MemoryPlanError, match="sources = 'device'"):
        plan_memory(tmap, torch.bfloat16, COMPONENTS, device=GPU, free=need_device - 1, sources="device")
    with pytest.raises(MemoryPlanError, match="not one of"):
        plan_memory(tmap, torch.bfloat16, COMPONENTS, device=GPU, free=need_device, sources="gpu")
    # without embed / lm_head an 80 GB card holds everything on the device, with 15+ GB for generation
    small = plan_memory(tmap, torch.bfloat16, DEFAULT_COMPONENTS, device=GPU, free=80 * 10**9, sources="auto")
    assert small.tier == "device" and small.left() > 15e9


def test_cpu_workers_share_the_host_memory(monkeypatch):
    import merge_core.devices as devices

    monkeypatch.setattr(devices, "free_memory", lambda device: 8000)
    assert free_per_worker(torch.device("cpu"), 4) == 2000
    assert free_per_worker(torch.device("cuda"), 4) == 8000  # each GPU worker has a device of its own


def test_plan_matches_what_the_device_tier_holds(tmp_path_factory):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    for components in (COMPONENTS, ("mlp", "embed")):
        lines: list[str] = []
        merger = ResidentMerger(
            str(trio.vlm),
            str(trio.llm),
            str(trio.base),
            sources="device",
            components=components,
            report=lines.append,
        )
        plan = merger.memory_plan
        assert plan.pristine + plan.llm + plan.base == merger.resident_bytes() > 0
        assert plan.model == sum(p.numel() * p.element_size() for p in merger.model.parameters())
        assert lines == [plan.summary()] and "GB left for generation" in lines[0]
    files = plan_for_checkpoints(
        str(trio.vlm), str(trio.llm), str(trio.base), device=torch.device("cpu"), dtype=None,
        components=("mlp", "embed"), sources="auto", workers=2,
    )  # fmt: skip
    assert (files.model, files.pristine, files.llm, files.base) == (
        plan.model,
        plan.pristine,
        plan.llm,
        plan.base,
    )


# --- engine = "vllm": vLLM's weights and KV cache plus the update path's sources -----------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_plan_equals_the_sum_of_what_it_plans_for(real_trios, family):
    root, vm, lm = real_trios[family]
    tmap = preflight(*[ModelFiles(root / k, k) for k in ("vlm", "llm", "base")])
    total = 80 * 10**9
    gpu = plan_vllm_memory(
        tmap, torch.bfloat16, DEFAULT_COMPONENTS, device=GPU, free=10**12, total=total, gpu_memory_utilization=0.5
    )
    hf = plan_memory(tmap, torch.bfloat16, DEFAULT_COMPONENTS, device=GPU, free=10**12, sources="device")
    held = set(DEFAULT_COMPONENTS)
    sources = _bytes(vm, lambda n: n.startswith(LM_PREFIX[family]) and _component(n) in held)
    sources += 2 * _bytes(lm, lambda n: _component(n) in held)  # the LLM's and the base's partners
    assert gpu.model == _bytes(vm)
    assert gpu.kv_cache == total // 2 - _bytes(vm) > 0  # vLLM's share less its weights
    assert gpu.pristine + gpu.llm + gpu.base == sources
    assert gpu.scratch == hf.scratch > 0 and gpu.reserve == 0
    assert gpu.on_device() == total // 2 + sources + gpu.scratch
    assert gpu.left() == 10**12 - gpu.on_device()
    cpu = plan_vllm_memory(
        tmap, torch.bfloat16, DEFAULT_COMPONENTS, device=torch.device("cpu"), free=10**12,
        kv_cache_bytes=3 << 30,
    )  # fmt: skip
    assert cpu.kv_cache == 3 << 30 and cpu.reserve > 0
    assert cpu.on_device() == _bytes(vm) + (3 << 30) + sources + cpu.scratch
    assert "engine 'vllm'" in cpu.summary() and "KV cache" in cpu.summary()


def test_vllm_plan_refuses_what_cannot_fit(real_trios):
    root, vm, _ = real_trios["qwen2_5_vl"]
    tmap = preflight(*[ModelFiles(root / k, k) for k in ("vlm", "llm", "base")])
    total = 80 * 10**9
    kw = dict(device=GPU, total=total, gpu_memory_utilization=0.5)
    fits = plan_vllm_memory(tmap, torch.bfloat16, COMPONENTS, free=10**12, **kw)
    need = fits.on_device()
    assert plan_vllm_memory(tmap, torch.bfloat16, COMPONENTS, free=need, **kw).left() == 0
    with pytest.raises(MemoryPlanError, match=r"engine 'vllm' does not fit cuda.*GB are free"):
        plan_vllm_memory(tmap, torch.bfloat16, COMPONENTS, free=need - 1, **kw)
    share = (_bytes(vm) - 1) / total  # vLLM's share one byte short of the weights: no KV cache
    with pytest.raises(MemoryPlanError, match="less than the model's .* GB of weights"):
        plan_vllm_memory(
            tmap, torch.bfloat16, COMPONENTS, device=GPU, free=10**12, total=total, gpu_memory_utilization=share
        )
    cpu = torch.device("cpu")
    small = plan_vllm_memory(tmap, torch.bfloat16, COMPONENTS, device=cpu, free=10**12)
    with pytest.raises(MemoryPlanError, match="engine 'vllm' does not fit cpu"):
        plan_vllm_memory(
            tmap, torch.bfloat16, COMPONENTS, device=cpu, free=small.on_device() + small.reserve - 1
        )
    with pytest.raises(MemoryPlanError, match="needs the device's total memory"):
        plan_vllm_memory(tmap, torch.bfloat16, COMPONENTS, device=GPU, free=10**12)


def test_vllm_plan_for_checkpoints_reads_the_device(real_trios, monkeypatch):
    import merge_core.devices as devices

    root, vm, _ = real_trios["qwen2_5_vl"]
    total = 80 * 10**9
    monkeypatch.setattr(devices, "free_memory", lambda device: 7 * 10**11)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * 10**9, total))
    assert total_memory(torch.device("cpu")) is None
    assert total_memory(GPU) == total
    args = [str(root / k) for k in ("vlm", "llm", "base")]
    plan = plan_vllm_for_checkpoints(
        *args, device=GPU, dtype="bfloat16", components=DEFAULT_COMPONENTS, gpu_memory_utilization=0.6
    )
    assert plan.free == 7 * 10**11 and plan.kv_cache == int(0.6 * total) - _bytes(vm)
    cpu = plan_vllm_for_checkpoints(
        *args, device=torch.device("cpu"), dtype="bfloat16", components=DEFAULT_COMPONENTS, workers=7,
        kv_cache_bytes=1 << 30,
    )  # fmt: skip
    assert cpu.free == 10**11 and cpu.kv_cache == 1 << 30  # CPU workers share the host's RAM
