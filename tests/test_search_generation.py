"""``[objectives.generation]``: parsed and validated in the study file, resolved by the worker for its VLM,
recorded with the worker's info and beside an exported recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from merge_core import Recipe
from objectives.generation import GenerationConfig
from objectives.tsv import write_tsv
from search.cli.main import main as cli_main
from search.results.export import export_recipe, provenance_path
from search.study.spec import StudySpecError, spec_from_dict
from tests.test_obj_datasets import mathvision_rows
from tests.tiny.models import build_trio
from tests.tiny.vlm_processing import add_processor


def _study(objectives: dict | None = None, toy: bool = False) -> dict:
    models = {"toy": {"seed": 0, "size": "ci"}} if toy else {"vlm": "o/v", "llm": "o/l", "base": "o/b"}
    return {
        "name": "g",
        "n_trials": 3,
        "models": models,
        "objectives": {"datasets": ["A"], **(objectives or {})},
    }


def test_presets_legacy_field_and_every_setting() -> None:
    assert spec_from_dict(_study()).objectives.generation == {"preset": "vlmeval"}
    toy = spec_from_dict(_study({"datasets": [], "max_new_tokens": 24}, toy=True)).objectives
    assert toy.generation == {"preset": "none", "max_new_tokens": 24} and toy.max_new_tokens == 24
    full = {
        "preset": "vlmeval", "max_new_tokens": 2048, "min_pixels": 10, "max_pixels": 20,
        "repetition_penalty": 1.05, "stop_strings": ["\n\nQuestion:"], "eos_token_ids": [5, 5, 9],
        "system_prompt": "", "instructions": {"*": "Think.", "MathVista_MINI": "Answer."},
    }  # fmt: skip
    got = spec_from_dict(_study({"generation": full})).objectives
    assert got.generation == {**full, "eos_token_ids": [5, 9]}
    assert got.max_new_tokens == 2048  # what promotion's built-in backend reads


@pytest.mark.parametrize(
    ("generation", "message"),
    [
        ({"preset": "hf"}, "`objectives.generation.preset` is 'hf'; allowed: vlmeval, none"),
        ({"max_new_tokens": 0}, "`objectives.generation.max_new_tokens` must be >= 1"),
        ({"min_pixels": 50, "max_pixels": 20}, "`objectives.generation.min_pixels` (50) is above max_pixels"),
        ({"repetition_penalty": 0}, "`objectives.generation.repetition_penalty` must be > 0.0"),
        ({"repetition_penalty": "1"}, "`objectives.generation.repetition_penalty` must be a number"),
        ({"stop_strings": ["a", ""]}, "`objectives.generation.stop_strings` has an empty string"),
        ({"eos_token_ids": [-1]}, "`objectives.generation.eos_token_ids` must be a list of token ids"),
        ({"instructions": {"*": 3}}, "`objectives.generation.instructions` must be a table of strings"),
        ({"system_prompt": 1}, "`objectives.generation.system_prompt` must be a string"),
        ({"top_p": 0.5}, "unknown field `objectives.generation.top_p`"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_field(generation: dict, message: str) -> None:
    with pytest.raises(StudySpecError) as err:
        spec_from_dict(_study({"generation": generation}), src="s.toml")
    assert str(err.value).startswith("s.toml: ") and message in str(err.value) and "\n" not in str(err.value)


def test_both_max_new_tokens_is_an_error_and_the_cli_exits_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(
        StudySpecError, match="`objectives.max_new_tokens` is also set in objectives.generation"
    ):
        spec_from_dict(_study({"max_new_tokens": 5, "generation": {"max_new_tokens": 6}}))
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "g"\n[models]\nvlm = "o/v"\nllm = "o/l"\n[objectives]\ndatasets = ["A"]\n'
                   "[objectives.generation]\nmax_pixels = -3\n")  # fmt: skip
    assert cli_main(["status", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "objectives.generation.max_pixels" in err and len(err.splitlines()) == 1


def test_worker_resolves_for_its_family_and_reports_it(tmp_path: Path) -> None:
    from search.engine.worker import TrialWorker, WorkerConfig

    trio = build_trio("qwen2_vl", tmp_path / "trio", seed=5)
    add_processor(trio.vlm)
    data = write_tsv(mathvision_rows()[:3], tmp_path / "MathVision_G.tsv")
    common = dict(vlm=str(trio.vlm), llm=str(trio.llm), base=str(trio.base), datasets=(str(data),),
                  chunk_size=3, batch_size=2)  # fmt: skip
    spec = spec_from_dict(_study({"generation": {"max_new_tokens": 4, "max_pixels": 56 * 56}}))
    worker = TrialWorker(WorkerConfig(**common, generation=spec.objectives.generation))
    got = worker.info()["generation"]
    assert (
        got["min_pixels"] == 1280 * 28 * 28 and got["max_pixels"] == 56 * 56
    )  # the preset, then the study's
    assert (got["max_new_tokens"], got["repetition_penalty"], got["batch_size"]) == (4, 1.0, 2)
    assert worker.scorer.generator.config == worker.generation
    recipe = Recipe.from_dict({"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base),
                               "method": "linear", "weight": 0.5})  # fmt: skip
    rows = worker.run_step(recipe.to_dict(), recipe.id, 0)["records"]
    assert len(rows) == 3
    # no settings at all (an older caller): the processor's bounds and the WorkerConfig's max_new_tokens,
    # no repetition penalty (the preset "none" records 1.0)
    plain = TrialWorker(WorkerConfig(**common, max_new_tokens=7)).info()["generation"]
    assert plain == GenerationConfig(max_new_tokens=7, batch_size=2, repetition_penalty=1.0).to_dict()


def test_export_writes_provenance_beside_the_recipe(tmp_path: Path) -> None:
    recipe = Recipe.from_dict({"vlm": "/v", "llm": "/l", "method": "linear", "weight": 0.25}).to_dict()
    generation = GenerationConfig(max_new_tokens=9).to_dict()
    out = export_recipe(recipe, tmp_path / "best.json", provenance={"trial": 4, "generation": generation})
    assert Recipe.from_json(out.read_text()).to_dict() == recipe  # the recipe file is the recipe alone
    prov = json.loads(provenance_path(out).read_text())
    assert provenance_path(out) == tmp_path / "best.provenance.json"
    assert prov == {"schema": "mergesearch.provenance/v1", "recipe_id": Recipe.from_dict(recipe).id,
                    "trial": 4, "generation": generation}  # fmt: skip
    assert not provenance_path(export_recipe(recipe, tmp_path / "plain.json")).exists()
