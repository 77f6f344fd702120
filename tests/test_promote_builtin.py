"""Promotion with the built-in backend on the toy world (size "ci"): merge, full scoring, stored result.

The reference is computed in the test from the per-item records the backend keeps: each response is
judged again with ``objectives.answers.judge`` against the TSV item and the accuracies are re-aggregated
by hand; every item of the full toy set must have been scored exactly once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import optuna
import pytest

from merge_core import Recipe
from objectives.answers import judge
from objectives.datasets import load_dataset
from objectives.full_eval import BUILTIN_LABEL
from search.results.promote import promote_study
from search.study.spec import load_spec
from search.study.trials import trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def world(toy_world_ci):
    return toy_world_ci


def test_builtin_promotion_on_toy_world(tmp_path: Path, world) -> None:
    toml = tmp_path / "toy.toml"
    toml.write_text(
        f'name = "toyp"\nstorage = "sqlite:///{tmp_path / "s.db"}"\noutput_dir = "{tmp_path / "runs"}"\nn_trials = 4\n'
        '[models]\ntoy = { seed = 0, size = "ci" }\n'
        "[objectives]\ndatasets = []\nchunk_size = 40\nmax_new_tokens = 24\nbatch_size = 20\n"
        '[promotion]\ntop_k = 1\nbackend = "builtin"\n'  # datasets: the toy world's full sets
    )
    spec = load_spec(toml)
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="maximize")
    for value, fields in (
        (0.3, {"method": "linear", "weight": 0.0}),
        (0.6, {"method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.0}),
    ):
        r = Recipe.from_dict(
            {"vlm": str(world.vlm), "llm": str(world.llm), "base": str(world.base), **fields}
        )
        study.add_trial(
            optuna.trial.create_trial(value=value, user_attrs={"recipe": r.to_dict(), "recipe_id": r.id})
        )

    (res,) = promote_study(spec, console=_Quiet())
    assert res.trial_number == 1 and res.status == "evaluated"
    fresh = optuna.load_study(study_name=spec.name, storage=spec.storage)
    stored = trial_attr(fresh, fresh.trials[1], "full_eval")
    assert stored["backend"] == "builtin" and stored["label"] == BUILTIN_LABEL

    assert sorted(stored["per_dataset"]) == sorted(world.datasets)
    records_by_ds: dict[str, list[dict]] = defaultdict(list)
    for line in (Path(stored["work_dir"]) / "records.jsonl").read_text().splitlines():
        for r in json.loads(line)["records"]:
            records_by_ds[r["dataset"]].append(r)
    for name in world.datasets:
        items = {it.index: it for it in load_dataset(name, root=world.data_dir).items}
        records = records_by_ds[name]
        assert sorted(r["index"] for r in records) == sorted(items)  # the full set, each item once
        per: dict[str, list[bool]] = defaultdict(list)
        for r in records:
            ok = judge(r["response"], items[r["index"]]).correct
            assert ok == r["correct"]
            per[items[r["index"]].category].append(ok)
        overall = sum(sum(v) for v in per.values()) / len(records)
        got = stored["per_dataset"][name]
        assert got["overall"] == pytest.approx(overall) and got["n"] == len(items)
        assert got["per_category"] == pytest.approx({c: sum(v) / len(v) for c, v in per.items()})
        assert 0.0 < overall  # the promoted toy merge answers some items (a broken pipeline scores 0)

    (again,) = promote_study(spec, console=_Quiet())
    assert again.status == "cached" and again.full_eval == stored


class _Quiet:
    def print(self, *args, **kwargs) -> None:
        pass


def test_builtin_backend_resumes_after_interruption(tmp_path: Path, world) -> None:
    from objectives.full_eval import get_backend

    model = world.vlm  # any checkpoint; the VLM alone is the weight-0 merge
    calls: list[str] = []

    def interrupt_after_first(msg: str) -> None:
        calls.append(msg)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process is stopped after the first finished chunk

    opts = {"data_root": world.data_dir, "chunk_size": 40, "max_new_tokens": 24, "batch_size": 20}
    backend = get_backend("builtin", log=interrupt_after_first, **opts)
    with pytest.raises(KeyboardInterrupt):
        backend.evaluate(model, ["MathVista_TOY"], tmp_path / "w")
    assert (
        len((tmp_path / "w" / "records.jsonl").read_text().splitlines()) == 1
    )  # the finished chunk was kept
    resumed = backend.evaluate(model, ["MathVista_TOY"], tmp_path / "w")
    n_chunks = len(calls)  # 1 before the interruption + the chunks run on resume
    clean_log: list[str] = []
    clean = get_backend("builtin", log=clean_log.append, **opts).evaluate(
        model, ["MathVista_TOY"], tmp_path / "clean"
    )
    assert n_chunks == len(clean_log)  # the resumed run did not score the first chunk again
    assert resumed.to_dict()["per_dataset"] == clean.to_dict()["per_dataset"]  # deterministic, same result
