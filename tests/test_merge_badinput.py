"""Bad input (issue §7): one-line error naming the file / tensor / field, exit code 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_core import (
    ArchitectureError,
    ModelFilesError,
    Recipe,
    RecipeError,
    ResidentMerger,
    inspect_models,
    merge_to_disk,
)
from search.cli.main import main
from tests.tiny.models import cached_trio


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return cached_trio(tmp_path_factory, "llava_next")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_merge(tmp_path: Path, recipe: dict, capsys) -> tuple[int, str]:
    r = tmp_path / "recipe.json"
    r.write_text(json.dumps(recipe))
    before = set(tmp_path.iterdir())
    code = main(["merge", str(r), "--out", str(tmp_path / "out"), "--quiet"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mergesearch")]
    assert not (tmp_path / "out").exists()
    assert set(tmp_path.iterdir()) == before, "something was written"
    assert len(lines) == 1 and lines[0].startswith("mergesearch: error: "), lines  # one line
    return code, lines[0]


def recipe(trio, **over) -> dict:
    return {
        "vlm": str(trio.vlm),
        "llm": str(trio.llm),
        "base": str(trio.base),
        "method": "ties",
        "density": 0.5,
        **over,
    }


def test_missing_path(trio, tmp_path, capsys):
    code, err = run_merge(tmp_path, recipe(trio, llm=str(tmp_path / "no-such-model")), capsys)
    assert code == 2 and "llm path" in err and "no-such-model" in err and "does not exist" in err


def test_pickled_weights_are_refused(trio, tmp_path, capsys):
    m = tmp_path / "pickled"
    m.mkdir()
    shutil.copy(trio.llm / "config.json", m / "config.json")
    (m / "pytorch_model.bin").write_bytes(b"\x80\x04not-loaded")
    code, err = run_merge(tmp_path, recipe(trio, base=str(m)), capsys)
    assert code == 2 and "pytorch_model.bin" in err and "pickle is refused" in err and "safetensors" in err


def test_folder_without_weights(trio, tmp_path, capsys):
    m = tmp_path / "empty"
    m.mkdir()
    shutil.copy(trio.llm / "config.json", m / "config.json")
    code, err = run_merge(tmp_path, recipe(trio, llm=str(m)), capsys)
    assert code == 2 and "holds no *.safetensors" in err and str(m) in err


def test_unknown_architecture(trio, tmp_path, capsys):
    m = copy_model(trio.vlm, tmp_path / "weird")
    cfg = json.loads((m / "config.json").read_text())
    cfg["model_type"] = "blip_2"
    (m / "config.json").write_text(json.dumps(cfg))
    code, err = run_merge(tmp_path, recipe(trio, vlm=str(m)), capsys)
    assert code == 2 and "unknown VLM architecture model_type='blip_2'" in err and "llava_next" in err
    with pytest.raises(ArchitectureError):
        ResidentMerger(str(m), str(trio.llm))


def test_shape_mismatch_lists_the_tensor(trio, tmp_path, capsys):
    m = copy_model(trio.llm, tmp_path / "llm2")
    sd = load_file(m / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(96, 64)
    save_file(sd, m / "model.safetensors", metadata={"format": "pt"})
    code, err = run_merge(tmp_path, recipe(trio, llm=str(m)), capsys)
    assert (
        code == 2
        and "shape mismatch" in err
        and "language_model.model.layers.1.mlp.up_proj.weight [128, 64]" in err
    )
    assert "[96, 64]" in err
    report = inspect_models(str(trio.vlm), str(m))
    assert not report.ok and any("layers.1.mlp.up_proj" in p for p in report.problems)
    assert main(["inspect", str(trio.vlm), str(m)]) == 2


def test_missing_partner_tensor(trio, tmp_path, capsys):
    m = copy_model(trio.base, tmp_path / "base2")
    sd = load_file(m / "model.safetensors")
    del sd["model.layers.0.self_attn.o_proj.weight"]
    save_file(sd, m / "model.safetensors", metadata={"format": "pt"})
    code, err = run_merge(tmp_path, recipe(trio, base=str(m)), capsys)
    assert code == 2 and "no partner 'model.layers.0.self_attn.o_proj.weight' in the base" in err


def test_llm_of_another_family(tmp_path_factory, trio, tmp_path, capsys):
    qwen = cached_trio(tmp_path_factory, "qwen2_vl")
    code, err = run_merge(tmp_path, recipe(trio, llm=str(qwen.llm)), capsys)
    assert code == 2 and "model_type 'qwen2' does not pair with llava_next" in err


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_shard_header(trio, tmp_path, capsys, damage):
    m = copy_model(trio.vlm, tmp_path / "broken")
    f = m / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:1000] if damage == "truncate" else b"\xff" * 16 + data[16:])
    code, err = run_merge(tmp_path, recipe(trio, vlm=str(m)), capsys)
    assert code == 2 and "corrupt safetensors file" in err and str(f) in err


def test_bad_recipe_fields_exit_2(trio, tmp_path, capsys):
    code, err = run_merge(tmp_path, recipe(trio, densty=0.5), capsys)
    assert code == 2 and "'densty' is unknown" in err and "recipe.json" in err
    code, err = run_merge(tmp_path, recipe(trio, density=1.5), capsys)
    assert code == 2 and "'density' must be a number in (0, 1]" in err


def test_explicit_schedule_of_the_wrong_length_fails_before_writing(trio, tmp_path, capsys):
    bad = recipe(trio, schedule={"shape": "explicit", "values": [0.5, 0.5, 0.5]})
    code, err = run_merge(tmp_path, bad, capsys)
    assert code == 2 and "'schedule.values' has 3 values but the model has 2 layers" in err
    with pytest.raises(RecipeError):
        merge_to_disk(Recipe.from_dict(bad), tmp_path / "x", progress=False)


def test_index_naming_a_missing_shard(trio, tmp_path):
    m = copy_model(trio.vlm, tmp_path / "idx")
    (m / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}})
    )
    report = inspect_models(str(m), str(trio.llm))
    assert (
        not report.ok
        and "missing shard" in report.problems[0]
        and "model-00002-of-00002" in report.problems[0]
    )
    with pytest.raises(ModelFilesError, match="missing shard"):
        merge_to_disk(Recipe.from_dict(recipe(trio, vlm=str(m))), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
