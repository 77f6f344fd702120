"""The VLMEvalKit launcher on a GPU host: sdpa replaces flash_attention_2 whenever ``flash_attn`` does not import,
and only then. Runs without VLMEvalKit: the processor patches are stubbed, the host's CUDA is simulated."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from objectives.full_eval.vlmeval import launcher


@pytest.fixture()
def restore_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    # the raw classmethod descriptor, so subclasses get their own cls back after the test
    monkeypatch.setattr(
        transformers.PreTrainedModel,
        "from_pretrained",
        transformers.PreTrainedModel.__dict__["from_pretrained"],
    )
    monkeypatch.setattr(launcher, "patch_image_only_processors", lambda: [])
    monkeypatch.setattr(launcher, "patch_processor_argument_order", lambda: [])
    monkeypatch.setattr(launcher, "_cuda_available", lambda: True)  # a GPU host: no CPU patches


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    path = tmp_path_factory.mktemp("lm")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


def test_flash_attn_importable_reports_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import of a None entry raises ImportError
    why = launcher.flash_attn_importable()
    assert why is not None and why.startswith("ModuleNotFoundError")
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert launcher.flash_attn_importable() is None


def test_without_flash_attn_the_wrappers_load_with_sdpa(
    restore_from_pretrained: None, tiny_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if launcher.flash_attn_importable() is not None:  # as VLMEvalKit's wrappers fail without the patch
        with pytest.raises((ImportError, ValueError)):
            AutoModelForCausalLM.from_pretrained(tiny_lm, attn_implementation="flash_attention_2")
    monkeypatch.setattr(
        launcher, "flash_attn_importable", lambda: "ImportError: No module named 'flash_attn'"
    )
    lines = launcher.adapt("auto")
    assert lines == [
        "[mergesearch adapter] flash_attn is not usable (ImportError: No module named 'flash_attn'): "
        "PreTrainedModel.from_pretrained: flash_attention_2 -> sdpa"
    ]
    # what Qwen2VLChat / IDEFICS2 / LLaVA_Next ask for
    for kwargs in ({"attn_implementation": "flash_attention_2"}, {"_attn_implementation": "flash_attention_2"},
                   {"use_flash_attention_2": True}):  # fmt: skip
        for cls in (AutoModelForCausalLM, Qwen2ForCausalLM):  # an Auto class, and a concrete one
            model = cls.from_pretrained(tiny_lm, **kwargs)
            assert model.config._attn_implementation == "sdpa", (cls, kwargs)
    eager = AutoModelForCausalLM.from_pretrained(tiny_lm, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"  # other requests pass unchanged


def test_with_flash_attn_nothing_changes(
    restore_from_pretrained: None, tiny_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher, "flash_attn_importable", lambda: None)
    original = transformers.PreTrainedModel.__dict__["from_pretrained"]
    assert launcher.adapt("auto") == []
    assert transformers.PreTrainedModel.__dict__["from_pretrained"] is original
    assert launcher.adapt("0") == []
