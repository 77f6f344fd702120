"""Promotion's built-in backend decodes with every generation setting the proxy decoded with.

Two checks: (1) plumbing — a study that sets every ``[objectives.generation]`` field to a value that is no
default; the backend built from the study (``search.results.promote.study_defaults``) resolves the same
``GenerationConfig`` as the proxy's worker, each field equals the value written in the study here, and the
model's ``generate`` receives them (a recording wrapper around the real tiny model's ``generate``);
(2) a real tiny model: a setting that changes the proxy's responses changes the promoted responses the same
way, item for item (proxy = ``TrialWorker.run_step`` on the resident merge, promotion = ``merge_to_disk`` +
``BuiltinBackend.evaluate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from merge_core import Recipe, merge_to_disk
from objectives.datasets import load_dataset
from objectives.full_eval.builtin import BuiltinBackend
from objectives.generation import RowRepetitionPenalty, StopStringsCriteria
from objectives.tsv import write_tsv
from search.results.promote import make_backend, study_defaults
from search.study.spec import spec_from_dict
from tests.test_obj_datasets import mathvision_rows
from tests.tiny.models import build_trio
from tests.tiny.vlm_processing import add_processor

EVERY = {
    "preset": "vlmeval", "max_new_tokens": 5, "min_pixels": 28 * 28, "max_pixels": 28 * 28 * 2,
    "repetition_penalty": 1.7, "stop_strings": ["@@"], "eos_token_ids": [7], "system_prompt": "Be exact.",
    "instructions": {"*": "Answer briefly."}, "dataset_prompts": "none",
}  # fmt: skip


def _spec(generation: dict[str, Any], batch_size: int = 2) -> Any:
    return spec_from_dict(
        {
            "name": "g",
            "n_trials": 1,
            "models": {"vlm": "o/v", "llm": "o/l", "base": "o/b"},
            "objectives": {"datasets": ["A"], "batch_size": batch_size, "chunk_size": 3, "generation": generation},
            "promotion": {"backend": "builtin"},
        }
    )


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("promote_gen")
    trio = build_trio("qwen2_vl", root / "trio", seed=5)
    add_processor(trio.vlm)
    return trio


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tsv(mathvision_rows(), tmp_path_factory.mktemp("promote_gen_data") / "MathVision_G.tsv")


def _worker(trio: Any, data: Path, spec: Any) -> Any:
    from search.engine.worker import TrialWorker, WorkerConfig

    obj = spec.objectives
    return TrialWorker(
        WorkerConfig(
            vlm=str(trio.vlm), llm=str(trio.llm), base=str(trio.base), datasets=(str(data),),
            chunk_size=obj.chunk_size, batch_size=obj.batch_size, max_new_tokens=obj.max_new_tokens,
            generation=obj.generation,
        )
    )  # fmt: skip


def test_every_generation_setting_reaches_the_promoted_models_generate(trio: Any, data: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from objectives.processing import load_processor

    spec = _spec(EVERY)
    backend = make_backend("builtin", data_root=None, log=lambda _m: None, **study_defaults(spec, "builtin"))
    assert isinstance(backend, BuiltinBackend)
    processor = load_processor(trio.vlm)
    model = AutoModelForImageTextToText.from_pretrained(str(trio.vlm)).eval()
    config = backend.generation_config(model.config.model_type, processor)
    # each field as the study file wrote it (independent of the resolver), and equal to the proxy worker's
    assert (config.max_new_tokens, config.min_pixels, config.max_pixels) == (5, 784, 1568)
    assert (config.repetition_penalty, config.stop_strings, config.system_prompt) == (1.7, ("@@",), "Be exact.")
    assert config.eos_token_ids == (7,) and config.instructions == {"*": "Answer briefly."}
    assert config.batch_size == 2 and config.dataset_prompts == "none"
    assert config == _worker(trio, data, spec).generation

    seen: list[dict[str, Any]] = []
    original = model.generate

    def recording_generate(**kwargs: Any) -> torch.Tensor:
        seen.append(kwargs)
        return original(**kwargs)

    model.generate = recording_generate  # type: ignore[method-assign]
    ds = load_dataset(data)
    scorer = backend._scorer(model, processor, [ds], config)
    records = scorer.run_chunk(scorer.chunks()[0])
    assert len(records) == 3 and seen
    own_eos = model.generation_config.eos_token_id
    own = [own_eos] if isinstance(own_eos, int) else list(own_eos or [])
    for kwargs in seen:
        # the penalty and the stop strings go in as the generator's own row-wise rules (objectives.generation)
        assert kwargs["max_new_tokens"] == 5 and kwargs["repetition_penalty"] == 1.0
        (penalty,) = kwargs["logits_processor"]
        assert isinstance(penalty, RowRepetitionPenalty) and penalty.penalty == 1.7
        (stops,) = kwargs["stopping_criteria"]
        assert isinstance(stops, StopStringsCriteria) and stops.stops == ("@@",)
        assert stops.tokenizer is processor.tokenizer
        assert kwargs["eos_token_id"] == list(dict.fromkeys([*own, 7]))
        prompts = processor.tokenizer.batch_decode(kwargs["input_ids"])
        assert all("Be exact." in p and "Answer briefly." in p for p in prompts)
        # max_pixels = 2 merged 28x28 patches: each image is at most 2x(2x2) patches of 14 px
        grids = kwargs["image_grid_thw"]
        assert int((grids[:, 1] * grids[:, 2]).max()) <= 2 * 4


def test_a_setting_changes_promoted_responses_as_it_changes_the_proxys(
    trio: Any, data: Path, tmp_path: Path
) -> None:
    recipe = Recipe.from_dict(
        {"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base), "method": "linear", "weight": 0.5}
    )
    merged = merge_to_disk(recipe, tmp_path / "merged", progress=False)
    responses: dict[str, dict[str, list[str]]] = {}
    for label, generation in (
        ("plain", {"preset": "none", "max_new_tokens": 12}),
        ("penalised", {"preset": "none", "max_new_tokens": 12, "repetition_penalty": 3.0,
                       "system_prompt": "Count."}),
    ):  # fmt: skip
        spec = _spec(generation)
        rows = _worker(trio, data, spec).run_step(recipe.to_dict(), recipe.id, 0)["records"]
        proxy = [r["response"] for r in sorted(rows, key=lambda r: r["index"])]
        backend = make_backend(
            "builtin", data_root=None, log=lambda _m: None, **study_defaults(spec, "builtin")
        )
        result = backend.evaluate(merged, [str(data)], tmp_path / f"eval_{label}")
        lines = (tmp_path / f"eval_{label}" / "records.jsonl").read_text().splitlines()
        promoted = sorted((r for line in lines for r in json.loads(line)["records"]), key=lambda r: r["index"])
        responses[label] = {"proxy": proxy, "promoted": [r["response"] for r in promoted]}
        assert result.generation is not None and result.generation["max_new_tokens"] == 12
    for label, got in responses.items():
        assert got["proxy"] == got["promoted"], label  # promotion decodes as the proxy did
    assert responses["plain"]["proxy"] != responses["penalised"]["proxy"]  # and the setting did change it


def test_records_decoded_with_other_settings_are_not_reused(trio: Any, data: Path, tmp_path: Path) -> None:
    recipe = Recipe.from_dict(
        {"vlm": str(trio.vlm), "llm": str(trio.llm), "base": str(trio.base), "method": "linear", "weight": 0.5}
    )
    merged = merge_to_disk(recipe, tmp_path / "merged", progress=False)
    work = tmp_path / "eval"
    logs: list[str] = []
    short = BuiltinBackend(chunk_size=3, batch_size=2, generation={"preset": "none", "max_new_tokens": 2})
    first = short.evaluate(merged, [str(data)], work)
    longer = BuiltinBackend(
        chunk_size=3, batch_size=2, generation={"preset": "none", "max_new_tokens": 9}, log=logs.append
    )
    second = longer.evaluate(merged, [str(data)], work)
    rows = [json.loads(line) for line in (work / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["settings"] != rows[1]["settings"]  # scored again, not reused
    assert any("other generation settings" in m for m in logs)
    assert first.generation["max_new_tokens"] == 2 and second.generation["max_new_tokens"] == 9
    n_tokens = [max(len(r["response"]) for r in row["records"]) for row in rows]
    assert n_tokens[1] > n_tokens[0]  # the second run's responses are its own (9 tokens, not 2)
    again = BuiltinBackend(chunk_size=3, batch_size=2, generation={"preset": "none", "max_new_tokens": 9})
    again.evaluate(merged, [str(data)], work)
    assert len((work / "records.jsonl").read_text().splitlines()) == 2  # same settings: reused
