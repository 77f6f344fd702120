"""ResidentMerger: in-place apply equals the streamed merge bit for bit in every memory tier; restore;
recipe checks; the device is checked before anything loads; only the components held may be merged."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

import merge_core.resident as resident
from merge_core import Recipe, RecipeError, ResidentMerger, merge_to_disk
from merge_core.devices import DeviceError
from merge_core.sources import Stager
from tests.tiny.models import FAMILIES, cached_trio

RECIPES = [
    {"method": "linear", "weight": 0.3, "components": ["attention", "mlp", "norm", "embed", "lm_head"]},
    {
        "method": "ties",
        "density": 0.5,
        "vlm_weight": 0.7,
        "llm_weight": 1.2,
        "components": ["attention", "embed"],
    },
    {"method": "dare_ties", "density": 0.5, "schedule": {"shape": "loglinear"}, "seed": 9},
    {"method": "dare_linear", "density": 0.3, "compat": "vlm_merging"},
    {"method": "task_arithmetic", "vlm_weight": 0.5, "components": ["mlp", "lm_head"]},
    {"method": "layer_swap", "weight": 0.2, "schedule": {"shape": "step", "start": 1}},
    {
        "method": "linear",
        "weight": 0.6,
        "components": ["attention", "mlp", "lm_head"],
        "component_weights": {"attention": 0.5, "lm_head": 0.25},
        "schedule": {"shape": "linear"},
    },
]
TIERS = ("device", "host", "host-side-stream")


def merger_for(trio, tier: str, monkeypatch=None, **kw) -> ResidentMerger:
    """A merger in ``tier``; "host-side-stream" runs the host tier through the stager's copy path
    (allocate, side stream, event) that every device but the CPU takes."""
    if tier == "host-side-stream":
        monkeypatch.setattr(resident, "Stager", lambda device, **kw: Stager(device, copy=True, **kw))
        tier = "host"
    return ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base), sources=tier, report=None, **kw)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def recipe_for(trio, d: dict) -> Recipe:
    return Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base), **d})


@pytest.mark.parametrize(
    "family,tie", [(f, False) for f in FAMILIES] + [("qwen2_vl", True), ("llava_next", True)]
)
def test_resident_equals_streamed_bit_for_bit(tmp_path_factory, tmp_path, family, tie):
    trio = cached_trio(tmp_path_factory, family, tie_embeddings=tie, vlm_extra_vocab=3)
    merger = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base))
    pristine = params(AutoModelForImageTextToText.from_pretrained(trio.vlm))
    recipes = RECIPES[:6] if family == "qwen2_vl" else RECIPES[:3]
    for i, d in enumerate(recipes):
        recipe = recipe_for(trio, d)
        out = merge_to_disk(recipe, tmp_path / f"m{i}", progress=False)
        streamed = params(AutoModelForImageTextToText.from_pretrained(out))
        merger.apply(recipe)
        live = params(merger.model)
        assert live.keys() == streamed.keys()
        for k in live:
            assert torch.equal(live[k], streamed[k]), (d["method"], k)
        assert any(not torch.equal(live[k], pristine[k]) for k in live), "nothing merged"
    merger.restore()
    for k, v in params(merger.model).items():
        assert torch.equal(v, pristine[k]), k


def test_apply_restores_what_the_previous_recipe_changed(tmp_path_factory):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    merger = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base))
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    attn = "model.language_model.layers.0.self_attn.q_proj.weight"
    before = params(merger.model)
    merger.apply(recipe_for(trio, {"method": "linear", "weight": 0.5}))
    assert not torch.equal(params(merger.model)[name], before[name])
    merger.apply(recipe_for(trio, {"method": "linear", "weight": 0.5, "components": ["attention"]}))
    now = params(merger.model)
    assert torch.equal(now[name], before[name])  # mlp back to the VLM's
    assert not torch.equal(now[attn], before[attn])
    # the same recipe twice gives the same weights (merged from the pristine copy, not compounded)
    merger.apply(recipe_for(trio, {"method": "linear", "weight": 0.5, "components": ["attention"]}))
    assert torch.equal(params(merger.model)[attn], now[attn])


def test_tied_embeddings_stay_tied(tmp_path_factory):
    trio = cached_trio(tmp_path_factory, "qwen2_vl", tie_embeddings=True)
    merger = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base))
    merger.apply(recipe_for(trio, {"method": "linear", "weight": 0.4, "components": ["embed"]}))
    m = merger.model
    assert m.lm_head.weight.data_ptr() == m.model.language_model.embed_tokens.weight.data_ptr()
    out = m(input_ids=torch.tensor([[1, 5, 9]])).logits
    assert torch.isfinite(out).all()


def test_recipe_must_name_the_resident_models(tmp_path_factory):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    other = cached_trio(tmp_path_factory, "qwen2_vl", seed=1)
    merger = ResidentMerger(str(trio.vlm), str(trio.llm))
    with pytest.raises(RecipeError, match="'vlm'.*holds"):
        merger.apply(Recipe.from_dict({"vlm": str(other.vlm), "llm": str(trio.llm), "weight": 0.1}))
    with pytest.raises(RecipeError, match="needs a base model"):
        merger.apply(recipe_for(trio, {"method": "ties"}))
    with pytest.raises(RecipeError, match="'dtype'"):
        merger.apply(
            Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "weight": 0.1, "dtype": "bfloat16"})
        )


@pytest.mark.parametrize("tier", TIERS)
def test_bf16_resident_matches_bf16_stream(tmp_path_factory, tmp_path, monkeypatch, tier):
    trio = cached_trio(tmp_path_factory, "llava_next")  # fp32 files: the sources are cast on the way in
    merger = merger_for(trio, tier, monkeypatch, dtype="bfloat16")
    for i, d in enumerate([{"method": "linear", "weight": 0.3}, {"method": "ties", "density": 0.3}]):
        recipe = recipe_for(trio, {**d, "dtype": "bfloat16"})
        streamed = params(
            AutoModelForImageTextToText.from_pretrained(
                merge_to_disk(recipe, tmp_path / str(i), progress=False)
            )
        )
        merger.apply(recipe)
        for k, v in params(merger.model).items():
            assert v.dtype == torch.bfloat16 and torch.equal(v, streamed[k]), k


def test_tiers_give_the_same_weights_as_merge_to_disk(tmp_path_factory, tmp_path, monkeypatch):
    """Every method, schedules and component weights, tied embeddings and rows only the VLM has: the
    device tier, the host tier and the host tier's side-stream path equal merge_to_disk bit for bit, and
    restore (the host tier re-reads the pristine tensors) gives back the VLM."""
    trio = cached_trio(tmp_path_factory, "qwen2_vl", tie_embeddings=True, vlm_extra_vocab=3)
    pristine = params(AutoModelForImageTextToText.from_pretrained(trio.vlm))
    device = merger_for(trio, "device")
    host = merger_for(trio, "host")
    side = merger_for(trio, "host-side-stream", monkeypatch)
    assert host.sources == side.sources == "host" and host.resident_bytes() == 0 < device.resident_bytes()
    for i, d in enumerate(RECIPES):
        recipe = recipe_for(trio, d)
        streamed = params(
            AutoModelForImageTextToText.from_pretrained(
                merge_to_disk(recipe, tmp_path / str(i), progress=False)
            )
        )
        for merger in (device, host, side):
            merger.apply(recipe)
            live = params(merger.model)
            for k in streamed:
                assert torch.equal(live[k], streamed[k]), (merger.sources, d["method"], k)
    for merger in (device, host, side):
        merger.restore()
        for k, v in params(merger.model).items():
            assert torch.equal(v, pristine[k]), k


def test_only_held_components_may_be_merged(tmp_path_factory, tmp_path):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    full = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base), report=None)
    merger = ResidentMerger(
        str(trio.vlm), str(trio.llm), str(trio.base), components=["attention", "mlp"], report=None
    )
    assert merger.resident_bytes() < full.resident_bytes()
    assert all("embed" not in c and "norm" not in c for c in merger._slots)
    with pytest.raises(
        RecipeError, match=r"'model.embed_tokens.weight' \(component 'embed'\).*does not hold"
    ):
        merger.apply(recipe_for(trio, {"method": "linear", "weight": 0.3, "components": ["mlp", "embed"]}))
    # a held subset still merges bit for bit
    recipe = recipe_for(trio, {"method": "ties", "density": 0.4, "components": ["attention"]})
    merger.apply(recipe)
    streamed = params(
        AutoModelForImageTextToText.from_pretrained(merge_to_disk(recipe, tmp_path / "m", progress=False))
    )
    for k, v in params(merger.model).items():
        assert torch.equal(v, streamed[k]), k
    with pytest.raises(RecipeError, match="non-empty subset"):
        ResidentMerger(str(trio.vlm), str(trio.llm), components=["vision"], report=None)


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded")


def test_missing_device_is_an_error_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", _no_load)
    missing = str(tmp_path / "nothing-here")  # the device is checked before the model paths
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda' but torch sees no cuda device"):
        ResidentMerger(missing, missing, device="cuda")
    assert str(resident.resolve_device("auto")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(DeviceError, match="'cuda:3' does not exist: this host has 1 cuda device"):
        ResidentMerger(missing, missing, device="cuda:3")
    with pytest.raises(DeviceError, match="not a device"):
        ResidentMerger(missing, missing, device="gpu0")
    with pytest.raises(DeviceError, match="2 workers asked on 'cuda'.*workers <= 1"):
        resident.resolve_device("cuda", workers=2)
    assert str(resident.resolve_device("auto")) == str(resident.resolve_device("cuda")) == "cuda:0"
    assert str(resident.resolve_device("cuda:0")) == "cuda:0"


def test_free_memory_reads_the_device_or_the_host(monkeypatch):
    from merge_core.devices import free_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (123, 456))
    assert free_memory(torch.device("cuda:0")) == 123
    assert free_memory(torch.device("cpu")) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resident_matches_cpu(tmp_path_factory):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    cpu = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base))
    gpu = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base), device="cuda")
    streamed = ResidentMerger(str(trio.vlm), str(trio.llm), str(trio.base), device="cuda", sources="host")
    for d in RECIPES:
        recipe = recipe_for(trio, d)
        cpu.apply(recipe)
        gpu.apply(recipe)
        streamed.apply(recipe)  # pinned buffers, side stream, events: the same bits as the device tier
        g = params(gpu.model)
        for k, v in params(streamed.model).items():
            assert torch.equal(v, g[k]), (d["method"], k)
        for k, v in params(cpu.model).items():
            # DARE masks are drawn on the CPU, top-k is exact: differences are rounding only
            torch.testing.assert_close(g[k].cpu(), v, rtol=1e-5, atol=1e-6, msg=f"{d['method']} {k}")
