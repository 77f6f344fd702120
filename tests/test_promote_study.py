"""Promotion bookkeeping on a real Optuna study (SQLite) with real recipes of a tiny Qwen2-VL trio.

Trials are created through Optuna's API (COMPLETE, with the ``recipe`` user attribute the coordinator
stores); promotion merges them with merge_core and evaluates them through the VLMEvalKit backend, whose
interpreter is the stand-in of test_promote_vlmeval (real launcher, real subprocess, VLMEvalKit's score
format; an item is correct iff its index is not a multiple of 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from safetensors import safe_open

from merge_core import Recipe
from merge_core.errors import MergesearchError
from objectives.full_eval.errors import DatasetFileError
from search.cli.main import main as cli_main
from search.results.promote import PromotionError, is_complete_checkpoint, promote_study, select_trials
from search.study.spec import load_spec
from search.study.trials import trial_attr
from tests.test_promote_vlmeval import _expected, make_fake_vlmeval, write_tsv
from tests.tiny.models import build_trio

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return build_trio("qwen2_vl", tmp_path_factory.mktemp("trio"), seed=3)


def write_study(
    tmp_path: Path, trio, *, directions=1, promotion_datasets=("MathVista_TEST", "MathVision_TEST")
) -> Path:
    toml = tmp_path / "promo.toml"
    datasets = ", ".join(f'"{d}"' for d in promotion_datasets)
    mode = 'mode = "multi"\n' if directions > 1 else ""
    toml.write_text(
        f'name = "promo"\nstorage = "sqlite:///{tmp_path / "study.db"}"\noutput_dir = "{tmp_path / "runs"}"\n'
        f'n_trials = 10\n\n[models]\nvlm = "{trio.vlm}"\nllm = "{trio.llm}"\nbase = "{trio.base}"\n\n'
        f'[objectives]\ndatasets = ["MathVista_TEST", "MathVision_TEST"]\ndata_dir = "{tmp_path / "LMUData"}"\n{mode}\n'
        + ('[pruner]\nname = "none"\n\n' if directions > 1 else "")
        + f'[promotion]\ntop_k = 2\nbackend = "vlmeval"\ndatasets = [{datasets}]\n'
    )
    return toml


def recipe(trio, weight: float) -> Recipe:
    return Recipe.from_dict(
        {
            "vlm": str(trio.vlm),
            "llm": str(trio.llm),
            "base": str(trio.base),
            "method": "linear",
            "weight": weight,
        }
    )


def add_trials(spec, trio, values: list, weights: list[float]) -> optuna.Study:
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, directions=spec.directions)
    for value, w in zip(values, weights, strict=True):
        r = recipe(trio, w)
        vals = value if isinstance(value, list) else [value]
        study.add_trial(
            optuna.trial.create_trial(
                values=vals,
                user_attrs={"recipe": r.to_dict(), "recipe_id": r.id, "scores": {"MathVista_TEST": vals[0]}},
            )
        )
    pruned = recipe(trio, 0.9)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            intermediate_values={0: 0.99},
            user_attrs={"recipe": pruned.to_dict()},
        )
    )
    return study


@pytest.fixture()
def fake_python(tmp_path: Path) -> Path:
    return make_fake_vlmeval(tmp_path)


@pytest.fixture()
def data(tmp_path: Path) -> dict[str, list]:
    (tmp_path / "LMUData").mkdir()
    return {
        "MathVista_TEST": write_tsv(tmp_path / "LMUData" / "MathVista_TEST.tsv", "mathvista", 9),
        "MathVision_TEST": write_tsv(tmp_path / "LMUData" / "MathVision_TEST.tsv", "mathvision", 6),
    }


def _lm_key_pair(model_dir: Path, llm_dir: Path) -> tuple[str, str]:
    with safe_open(str(next(model_dir.glob("*.safetensors"))), "pt") as f:
        vkey = next(k for k in f.keys() if k.endswith("layers.0.self_attn.q_proj.weight"))
    return vkey, "model.layers.0.self_attn.q_proj.weight"


def _tensor(model_dir: Path, key: str) -> torch.Tensor:
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            if key in f.keys():
                return f.get_tensor(key)
    raise KeyError(key)


def test_promote_top_k_stores_results_and_is_idempotent(
    tmp_path, trio, data, fake_python, monkeypatch
) -> None:
    monkeypatch.setenv("MERGESEARCH_VLMEVAL_CPU", "0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-study-test")  # the stand-in interpreter has no torch
    spec = load_spec(write_study(tmp_path, trio))
    add_trials(spec, trio, [0.2, 0.9, 0.5], [0.1, 0.5, 0.3])
    opts = {"python": fake_python, "create_env": False}
    results = promote_study(spec, backend_options=opts, console=_Quiet())

    assert [r.trial_number for r in results] == [1, 2]  # best first; the PRUNED trial is never promoted
    assert [r.status for r in results] == ["evaluated", "evaluated"]
    for r, w in zip(results, [0.5, 0.3], strict=True):
        assert r.recipe_id == recipe(trio, w).id
        assert r.model_dir == spec.output_dir / "promoted" / r.recipe_id and is_complete_checkpoint(
            r.model_dir
        )
        # the merged checkpoint is the recipe: linear out = (1 - w) * VLM + w * LLM on LM tensors
        vkey, lkey = _lm_key_pair(r.model_dir, trio.llm)
        want = (1 - w) * _tensor(trio.vlm, vkey) + w * _tensor(trio.llm, lkey)
        torch.testing.assert_close(_tensor(r.model_dir, vkey), want, rtol=1e-6, atol=1e-6)

    fresh = optuna.load_study(study_name=spec.name, storage=spec.storage)  # what status / report will read
    for r in results:
        stored = trial_attr(fresh, fresh.trials[r.trial_number], "full_eval")
        assert stored == json.loads(json.dumps(r.full_eval))
        assert stored["backend"] == "vlmeval" and stored["recipe_id"] == r.recipe_id
        for name, col in (("MathVista_TEST", "task"), ("MathVision_TEST", "category")):
            overall, per = _expected(data[name], col)
            assert stored["per_dataset"][name]["overall"] == pytest.approx(overall)
            assert stored["per_dataset"][name]["per_category"] == pytest.approx(per)
    assert trial_attr(fresh, fresh.trials[0], "full_eval") is None

    log = Path(results[0].full_eval["work_dir"]) / "vlmeval.log"
    shard = next(results[0].model_dir.glob("*.safetensors"))
    size, mtime = log.stat().st_size, shard.stat().st_mtime_ns
    again = promote_study(spec, backend_options=opts, console=_Quiet())
    assert [r.status for r in again] == ["cached", "cached"]
    assert [r.full_eval for r in again] == [r.full_eval for r in results]
    assert log.stat().st_size == size  # VLMEvalKit was not run again

    only_one = promote_study(spec, datasets=["MathVista_TEST"], backend_options=opts, console=_Quiet())
    assert [r.status for r in only_one] == ["cached", "cached"]  # covered by the stored result

    forced = promote_study(spec, top_k=1, force=True, backend_options=opts, console=_Quiet())
    assert [(r.trial_number, r.status) for r in forced] == [(1, "evaluated")]
    assert shard.stat().st_mtime_ns == mtime  # the merge is reused
    old = list(log.parent.parent.glob(f"{log.parent.name}.old-*"))
    assert len(old) == 1 and (old[0] / "vlmeval.log").stat().st_size == size  # earlier run kept aside
    assert log.is_file() and forced[0].full_eval["work_dir"] == str(log.parent)  # evaluated afresh


def test_pareto_front_for_several_objectives(tmp_path, trio) -> None:
    spec = load_spec(write_study(tmp_path, trio, directions=2))
    study = add_trials(spec, trio, [[0.9, 0.2], [0.1, 0.9], [0.6, 0.6], [0.4, 0.4]], [0.1, 0.2, 0.3, 0.4])
    assert sorted(t.number for t in select_trials(study, 0)) == [0, 1, 2]  # 3 is dominated by 2
    assert [t.number for t in select_trials(study, 1)] == [2]  # ranked by mean of values
    with pytest.raises(PromotionError, match="top_k"):
        select_trials(study, -1)


def test_errors_before_any_merge(tmp_path, trio, data, fake_python, monkeypatch) -> None:
    monkeypatch.setenv("MERGESEARCH_VLMEVAL_CPU", "0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-study-test")
    opts = {"python": fake_python, "create_env": False}
    spec = load_spec(write_study(tmp_path, trio, promotion_datasets=("MathVista_TEST", "MathVision_MINI")))
    with pytest.raises(MergesearchError, match="no study named"):
        promote_study(spec, backend_options=opts, console=_Quiet())
    study = optuna.create_study(study_name=spec.name, storage=spec.storage, direction="maximize")
    with pytest.raises(PromotionError, match="no COMPLETE trial"):
        promote_study(spec, backend_options=opts, console=_Quiet())
    r = recipe(trio, 0.4)
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"recipe": r.to_dict()}))
    with pytest.raises(PromotionError, match="top_k = 0"):
        promote_study(spec, top_k=0, backend_options=opts, console=_Quiet())
    with pytest.raises(DatasetFileError, match="060fe4fa5d868987ce179307bd5f8a33") as err:
        promote_study(spec, backend_options=opts, console=_Quiet())
    assert "MathVision_MINI.tsv" in str(err.value)
    assert not (spec.output_dir / "promoted").exists()  # failed in the preflight, nothing merged
    bad = {**r.to_dict(), "method": "frobnicate"}
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"recipe": bad}))
    with pytest.raises(MergesearchError, match="method"):
        promote_study(spec, datasets=["MathVista_TEST"], backend_options=opts, console=_Quiet())
    assert not (spec.output_dir / "promoted").exists()


def test_cli(tmp_path, trio, data, fake_python, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MERGESEARCH_VLMEVAL_CPU", "0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-study-test")
    toml = write_study(tmp_path, trio)
    add_trials(load_spec(toml), trio, [0.3, 0.6], [0.2, 0.6])
    assert cli_main(["promote", str(toml), "--backend", "builtin", "--judge", "gpt-4o-mini"]) == 2
    assert "--judge: only for --backend vlmeval" in capsys.readouterr().err
    assert cli_main(["promote", str(toml), "--top", "1", "--vlmeval-python", str(fake_python)]) == 0
    out = capsys.readouterr().out
    assert recipe(trio, 0.6).id in out and "MathVista_TEST" in out and "evaluated" in out
    assert (
        cli_main(
            ["promote", str(toml), "--top", "1", "--force", "--vlmeval-python", str(tmp_path / "missing")]
        )
        == 2
    )
    assert "not an executable" in capsys.readouterr().err


class _Quiet:
    def print(self, *args, **kwargs) -> None:
        pass
