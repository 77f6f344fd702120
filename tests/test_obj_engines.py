"""objectives.engines without vLLM: the study fields, the engine choice, the one-line errors before any load,
the settings mapping, vLLM's start-up arguments on both device sides, and the fused-module groups.
(The engine itself runs in tests/vllm, in .venv-vllm.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from merge_core import Recipe
from merge_core.updates import WeightUpdates
from objectives.engines import EngineError, VllmOptions, choice, choose_engine
from objectives.engines.choice import check_context
from objectives.engines.families import vllm_family
from objectives.engines.settings import sampling_kwargs
from objectives.engines.vllm_engine import llm_kwargs
from objectives.generation import GenerationConfig
from search.study.spec import spec_from_dict
from tests.tiny.models import cached_trio


def _study(engine: str | None = None, vllm: dict | None = None, max_new_tokens: int = 32) -> dict:
    objectives: dict = {"datasets": ["A"], "max_new_tokens": max_new_tokens}
    if engine is not None:
        objectives["engine"] = engine
    if vllm is not None:
        objectives["vllm"] = vllm
    return {"name": "s", "n_trials": 1, "models": {"vlm": "v", "llm": "l"}, "objectives": objectives}


def test_vllm_is_not_in_the_main_venv():
    assert "vllm" not in sys.modules
    assert not choice.vllm_installed()  # these tests run where `make test` runs: without vLLM


def test_study_fields_parse_and_default():
    spec = spec_from_dict(_study(), src="s.toml")
    assert spec.objectives.engine == "hf" and spec.objectives.vllm == VllmOptions()
    spec = spec_from_dict(
        _study("auto", {"max_model_len": 512, "gpu_memory_utilization": 0.4, "kv_cache_mb": 32}), src="s.toml"
    )
    assert spec.objectives.engine == "auto"
    assert spec.objectives.vllm == VllmOptions(512, 0.4, 32)


@pytest.mark.parametrize(
    ("engine", "vllm", "match"),
    [
        ("vllm", None, r"s\.toml: field `objectives.engine` is 'vllm' but vLLM is not installed here; pip install vllm"),
        ("gpu", None, r"field `objectives.engine` is 'gpu'; allowed: hf, vllm, auto"),
        ("auto", {"max_model_len": 16}, r"`objectives.vllm.max_model_len` is 16; .* above objectives.max_new_tokens \(32\)"),
        ("auto", {"gpu_memory_utilization": 1.5}, r"`objectives.vllm.gpu_memory_utilization` must be in \(0, 1\]"),
        ("auto", {"kv_cache_mb": 0}, r"`objectives.vllm.kv_cache_mb` must be a positive integer"),
        ("auto", {"max_len": 9}, r"unknown field `objectives.vllm.max_len`"),
    ],
)  # fmt: skip
def test_bad_engine_fields_are_one_line_errors(engine, vllm, match):
    with pytest.raises(EngineError, match=match) as err:
        spec_from_dict(_study(engine, vllm), src="s.toml")
    assert "\n" not in str(err.value)


def test_choice_by_family_installation_and_cpu_head_size(tmp_path_factory, tmp_path, monkeypatch):
    qwen = cached_trio(tmp_path_factory, "qwen2_vl").vlm  # head_dim 16: no vLLM CPU kernel
    llava = cached_trio(tmp_path_factory, "llava_next").vlm
    idefics2 = cached_trio(tmp_path_factory, "idefics2").vlm
    assert choose_engine("hf", qwen) == "hf"
    assert choose_engine("auto", qwen, "cuda") == "hf"  # vLLM absent here
    with pytest.raises(EngineError, match="vLLM is not installed here; pip install vllm"):
        choose_engine("vllm", qwen)
    monkeypatch.setattr(choice, "vllm_installed", lambda: True)  # as in .venv-vllm
    assert choose_engine("auto", qwen, "cuda:0") == "vllm"
    assert choose_engine("auto", qwen, "cpu") == "hf"  # falls back: head size 16 on the CPU
    assert choose_engine("auto", qwen, "auto") == "vllm"  # device not known yet: decided again per worker
    with pytest.raises(EngineError, match=r"on a CPU: the VLM .* has attention heads of 16, .* 32, 64, 80"):
        choose_engine("vllm", qwen, "cpu")
    cfg = json.loads((Path(qwen) / "config.json").read_text())
    cfg["text_config"]["num_attention_heads"], cfg["text_config"]["num_key_value_heads"] = 2, 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert choice.head_dim_of(tmp_path) == 32
    assert choose_engine("auto", tmp_path, "cpu") == choose_engine("vllm", tmp_path, "cpu") == "vllm"
    assert choose_engine("auto", llava, "cuda") == choose_engine("vllm", llava, "cuda") == "vllm"
    assert choose_engine("auto", llava, "cpu") == "hf"  # LLaVA-Next served, but head size 16 on the CPU
    assert choose_engine("auto", idefics2, "cuda") == "hf"  # a family the table does not serve falls back
    with pytest.raises(
        EngineError,
        match=r"does not serve the VLM .* \(model_type 'idefics2'\) \(vLLM 0.32 has no Idefics2 model .*\); "
        r"served: qwen2_vl, qwen2_5_vl, llava_next; use engine = 'hf' or 'auto'",
    ) as err:
        choose_engine("vllm", idefics2, "cuda")
    assert "\n" not in str(err.value)


def test_context_check():
    check_context(100, 60, 40, "x")
    with pytest.raises(
        EngineError, match=r"max_model_len is 99, but the proxy needs 100 tokens \(longest prompt 60"
    ):
        check_context(99, 60, 40, "the proxy")


def test_sampling_maps_generation_settings_one_to_one():
    cfg = GenerationConfig(max_new_tokens=7)
    assert sampling_kwargs(cfg) == {
        "n": 1, "temperature": 0.0, "max_tokens": 7, "skip_special_tokens": True, "repetition_penalty": 1.0,
    }  # fmt: skip
    assert sampling_kwargs(cfg, 1.05)["repetition_penalty"] == 1.05  # unset: the model's own, as in HF
    for field, value in (
        ("repetition_penalty", 1.1),
        ("stop_strings", ("</a>", "\n\n")),
        ("eos_token_ids", (5, 9)),
    ):
        setattr(cfg, field, value)  # the fields GenerationConfig gains with the generation settings
    kw = sampling_kwargs(cfg)
    assert kw["repetition_penalty"] == 1.1
    assert kw["stop"] == ["</a>", "\n\n"] and kw["include_stop_str_in_output"] is True
    assert kw["stop_token_ids"] == [5, 9]


def test_llm_kwargs_on_both_device_sides():
    opts = VllmOptions(max_model_len=None, gpu_memory_utilization=0.3, kv_cache_mb=48)
    cpu = llm_kwargs("/m", "cpu", "float32", 300, opts)
    gpu = llm_kwargs("/m", "cuda:0", None, 300, opts)
    for kw in (cpu, gpu):
        assert kw["enforce_eager"] is True and kw["max_model_len"] == 300 and kw["model"] == "/m"
        assert kw["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert cpu["kv_cache_memory_bytes"] == 48 << 20 and "gpu_memory_utilization" not in cpu
    assert gpu["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in gpu
    assert cpu["dtype"] == "float32" and gpu["dtype"] == "auto"


@pytest.mark.parametrize("prefix", ["model.", "model.language_model."])
def test_fused_modules_travel_whole(tmp_path_factory, prefix):
    fam = vllm_family("qwen2_vl")
    assert fam is not None
    q, k, v = (f"{prefix}layers.1.self_attn.{p}_proj.weight" for p in "qkv")
    assert (
        fam.module_of(q) == fam.module_of(k) == fam.module_of(v) == fam.module_of(q.replace("weight", "bias"))
    )
    assert fam.module_of(q) != fam.module_of(f"{prefix}layers.1.self_attn.o_proj.weight")
    gate, up = (f"{prefix}layers.0.mlp.{p}_proj.weight" for p in ("gate", "up"))
    assert fam.module_of(gate) == fam.module_of(up) != fam.module_of(f"{prefix}layers.0.mlp.down_proj.weight")

    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    updates = WeightUpdates(str(trio.vlm), str(trio.llm))
    recipe = Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "method": "linear", "weight": 0.5})
    list(updates.updates(recipe))
    q = "model.layers.1.self_attn.q_proj.weight"
    updates._held[q] = None  # one tensor of a fused module differs from the recipe, its siblings do not
    assert updates.pending(recipe) == [q]
    grouped = updates.pending(recipe, module_of=fam.module_of)
    assert set(grouped) == {
        f"model.layers.1.self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")
    }
