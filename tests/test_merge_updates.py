"""merge_core.updates: an engine that starts from the VLM's files and receives every update holds, after each
recipe of a sequence, exactly merge_to_disk's tensors of that recipe; only changed tensors are sent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from merge_core import Recipe, RecipeError, merge_to_disk
from merge_core.architectures import classify_vlm
from merge_core.io import ModelFiles
from merge_core.updates import WeightUpdates
from tests.tiny.models import cached_trio


def _read_dir(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def _in_memory_names(vlm: Path, out: Path) -> Path:
    """A copy of the VLM whose file uses transformers' in-memory names (model.language_model.*)."""
    shutil.copytree(vlm, out)
    state = _read_dir(out)
    for f in out.glob("*.safetensors"):
        f.unlink()
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    renamed = {}
    for k, v in state.items():
        if k.startswith("model.layers.") or k in ("model.embed_tokens.weight", "model.norm.weight"):
            k = "model.language_model." + k.removeprefix("model.")
        elif k.startswith("visual."):
            k = "model." + k
        renamed[k] = v
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


SEQUENCE = [
    ("linear", dict(method="linear", weight=0.4)),
    ("ties_attention", dict(method="ties", vlm_weight=1.0, llm_weight=0.7, density=0.5, components=["attention"])),
    ("ties_attention_again", dict(method="ties", vlm_weight=1.0, llm_weight=0.3, density=0.5, components=["attention"])),
    ("vlm_alone", dict(method="linear", weight=0.0)),
    ("dare_all", dict(method="dare_ties", vlm_weight=1.0, llm_weight=0.5, density=0.6, seed=3)),
]  # fmt: skip


@pytest.mark.parametrize("scheme", ["hub", "in_memory"])
def test_updates_follow_merge_to_disk_through_a_sequence(tmp_path_factory, tmp_path, scheme):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    vlm = trio.vlm if scheme == "hub" else _in_memory_names(trio.vlm, tmp_path / "vlm_mem")
    arch = ModelFiles(vlm, "vlm")
    names = list(arch.specs)
    if scheme == "in_memory":
        assert any(n.startswith("model.language_model.layers.") for n in names)
    engine = _read_dir(vlm)  # an engine loaded from the VLM's files
    updates = WeightUpdates(str(vlm), str(trio.llm), str(trio.base))
    tmap = updates.tmap
    lm_names = {t.name for t in tmap.tensors if t.where.canonical is not None}
    attention = {t.name for t in tmap.tensors if t.where.component == "attention"}
    previous: dict | None = None
    sent_before: dict[str, torch.Tensor] = {}
    for label, fields in SEQUENCE:
        recipe = Recipe.from_dict({"vlm": str(vlm), "llm": str(trio.llm), "base": str(trio.base), **fields})
        expected_names = updates.pending(recipe)
        sent = dict(updates.updates(recipe))
        assert list(sent) == expected_names
        engine.update(sent)
        reference = _read_dir(merge_to_disk(recipe, tmp_path / label, progress=False))
        assert set(reference) == set(engine)
        for name, ref in reference.items():
            assert torch.equal(engine[name], ref), (label, name)
            assert engine[name].dtype == ref.dtype
        assert set(sent) <= lm_names  # vision / projector tensors never travel
        in_recipe = {t.name for t in tmap.tensors if t.where.component in recipe.components}
        if label == "linear":
            assert set(sent) == in_recipe
        if label == "ties_attention":  # what linear changed goes back or changes again
            assert set(sent) == set(sent_before)
        if label == "ties_attention_again":  # attention-only after attention-only: attention only
            assert set(sent) == attention
        if label == "vlm_alone":  # back to the VLM: the pristine values of what ties changed
            assert set(sent) == attention
            for name in sent:
                assert torch.equal(sent[name], _read_dir(vlm)[name])
        previous = fields
        sent_before = sent
    assert previous is not None
    # the same recipe again sends nothing
    assert list(updates.updates(recipe)) == []
    for name in sent:
        assert classify_vlm(tmap.arch, name) is not None


def test_invalidate_sends_everything_and_recipe_checks(tmp_path_factory, tmp_path):
    trio = cached_trio(tmp_path_factory, "qwen2_vl")
    updates = WeightUpdates(str(trio.vlm), str(trio.llm))
    lm_names = {t.name for t in updates.tmap.tensors if t.where.canonical is not None}
    alone = Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "method": "linear", "weight": 0.0})
    assert list(updates.updates(alone)) == []  # the engine starts with the VLM
    updates.invalidate()
    assert {n for n, _ in updates.updates(alone)} == lm_names
    tv = Recipe.from_dict(
        {"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base), "method": "task_arithmetic"}
    )
    with pytest.raises(RecipeError, match="needs a base model"):
        updates.pending(tv)
    other = tmp_path / "other"
    shutil.copytree(trio.llm, other)
    with pytest.raises(RecipeError, match="'llm'"):
        updates.pending(alone.replace(llm=str(other)))
    bf16 = WeightUpdates(str(trio.vlm), str(trio.llm), dtype="bfloat16")
    with pytest.raises(RecipeError, match="'dtype' is 'float32' but these WeightUpdates hold torch.bfloat16; open"):
        bf16.plan(alone.replace(dtype="float32", weight=0.3))
    assert bf16.plan(alone) is bf16.plan(alone.replace())  # one plan per recipe, built once
    lin = alone.replace(weight=0.5)
    assert {t.dtype for _, t in bf16.updates(lin)} == {torch.bfloat16}
    cfg = json.loads((trio.vlm / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_vl"
