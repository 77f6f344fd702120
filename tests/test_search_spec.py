"""Study files, the search space, samplers/pruners, storage and export — no Ray, no models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from merge_core import Recipe
from search.results.export import ExportError, mergekit_config
from search.study.space import SearchSpace
from search.study.spec import StudySpecError, load_spec, spec_from_dict
from search.study.storage import StorageError, check_storage_url, mask_url, open_study

REPO = Path(__file__).resolve().parents[1]
MODELS = {"vlm": "/m/vlm", "llm": "/m/llm", "base": "/m/base"}
TOY_SPACE = {
    "methods": ["linear", "task_arithmetic", "ties", "dare_linear"],
    "components": [["attention", "mlp", "norm"], ["attention"], ["mlp"]],
    "schedules": ["constant", "linear", "step"],
    "start": [0, 3],
}


def _study(**over):
    d = {
        "name": "t",
        "n_trials": 5,
        "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
        "objectives": {"datasets": ["A", "B"]},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return d


def test_shipped_studies_load(tmp_path):
    for p in sorted((REPO / "studies").glob("*.toml")):
        spec = load_spec(p, base_dir=tmp_path)
        assert spec.n_trials and spec.n_trials > 0, p
        assert spec.output_dir == (tmp_path / "runs" / spec.name).resolve() or spec.output_dir.is_absolute()
        names = [b.name for b in spec.baselines]
        assert "vlm_alone" in names, p
        space = SearchSpace(spec, MODELS)
        for b in spec.baselines:  # every baseline is a valid recipe
            Recipe.from_dict(space.baseline(b.fields))


def test_paper_recipes_in_paper_pair_study():
    spec = load_spec(REPO / "studies" / "llava_next_llama3_8b_dartmath.toml")
    space = SearchSpace(spec, MODELS)
    recipes = {b.name: Recipe.from_dict(space.baseline(b.fields)) for b in spec.baselines}
    ties = next(r for r in recipes.values() if r.method == "ties")
    assert (ties.vlm_weight, ties.llm_weight, ties.density) == (1.6, 0.2, 0.2)
    swap = next(r for r in recipes.values() if r.method == "layer_swap")
    # paper: alpha 0.9 is the VLM weight (LLM weight 0.1); layers <= 5 frozen → first merged layer 6
    assert math.isclose(swap.weight, 0.1) and swap.schedule.start == 6


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"name": ""}, "name"),
        ({"n_trials": 0}, "n_trials"),
        ({"models": {"vlm": None}}, "models.vlm"),
        ({"objectives": {"mode": "pareto"}}, "objectives.mode"),
        ({"objectives": {"weights": {"C": 1.0}}}, "objectives.weights"),
        ({"space": {"methods": ["slerp"]}}, "space.methods"),
        ({"space": {"density": [0.5, 2.0]}}, "space.density"),
        ({"space": {"weight": [0.8, 0.2]}}, "space.weight"),
        ({"space": {"components": [["attention", "vision"]]}}, "space.components"),
        ({"space": {"schedules": ["explicit"]}}, "space.explicit_layers"),
        ({"space": {"methods": ["linear", "ties"]}, "sampler": {"name": "cmaes"}}, "sampler.name"),
        ({"sampler": {"name": "grid"}}, "space.vlm_weight"),
        ({"sampler": {"name": "grid"}, "space": {"methods": ["linear"]}}, "space.weight"),
        ({"objectives": {"mode": "multi"}}, "pruner.name"),
        ({"pruner": {"name": "sha"}}, "pruner.name"),
        ({"bogus": 1}, "bogus"),
        ({"space": {"densty": 0.5}}, "space.densty"),
        ({"timeout": "soon"}, "timeout"),
        ({"baselines": [{"name": "x", "method": "slerp"}]}, "baselines[0].method"),
        ({"baselines": [{"name": "x", "method": "linear", "vlm": "/other"}]}, "baselines[0].vlm"),
    ],
)
def test_invalid_fields_are_named(over, field):
    with pytest.raises(StudySpecError) as err:
        spec_from_dict(_study(**over), src="s.toml")
    msg = str(err.value)
    assert f"`{field}`" in msg and msg.startswith("s.toml"), msg


def test_invalid_toml_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("name = \n")
    with pytest.raises(StudySpecError, match="bad.toml: not valid TOML"):
        load_spec(p)
    with pytest.raises(StudySpecError, match="not found"):
        load_spec(tmp_path / "missing.toml")


def test_cli_invalid_study_exit_2(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'name = "x"\nn_trials = 3\n[models]\nvlm = "org/v"\nllm = "org/l"\n[objectives]\ndatasets = ["A"]\n'
        '[space]\nmethods = ["slerp"]\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "search.cli.main", "run", str(p)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert "space.methods" in r.stderr and "slerp" in r.stderr
    assert "Traceback" not in r.stderr


def test_space_conditional_parameters():
    spec = spec_from_dict(
        _study(
            space={
                "methods": ["linear", "ties", "layer_swap"],
                "schedules": ["constant", "step", "explicit"],
                "explicit_layers": 3,
                "start": [1, 4],
                "components": [["attention"], ["attention", "mlp"]],
            },
            sampler={"name": "random", "seed": 3},
        )
    )
    space = SearchSpace(spec, MODELS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3), direction="maximize")
    seen = set()
    for _ in range(60):
        t = study.ask()
        r = space.suggest(t)
        rec = Recipe.from_dict(r)  # every suggestion is a valid recipe
        p = t.params
        seen.add((r["method"], r["schedule"]["shape"]))
        assert ("density" in p) == (r["method"] == "ties")
        assert ("weight" in p) == (r["method"] in ("linear", "layer_swap"))
        assert ("start" in p) == (r["schedule"]["shape"] == "step")
        assert all((f"r_{i}" in p) == (r["schedule"]["shape"] == "explicit") for i in range(3))
        if r["method"] == "layer_swap":
            assert r["schedule"]["shape"] == "step" and "schedule" not in p
        if r["schedule"]["shape"] == "explicit":
            assert list(rec.schedule.values) == [p["r_0"], p["r_1"], p["r_2"]]
        assert r["components"] == p["components"].split("+")
        study.tell(t, 0.0)
    assert {m for m, _ in seen} == {"linear", "ties", "layer_swap"}


def test_component_flags_never_empty():
    spec = spec_from_dict(_study(space={"methods": ["linear"], "component_flags": ["attention", "mlp"]}))
    space = SearchSpace(spec, MODELS)
    study = optuna.create_study()
    for flags in ([True, True], [False, True], [False, False]):
        study.enqueue_trial({"comp_attention": flags[0], "comp_mlp": flags[1]})
        t = study.ask()
        r = space.suggest(t)
        want = [c for c, f in zip(("attention", "mlp"), flags, strict=True) if f] or ["attention"]
        assert r["components"] == want
        study.tell(t, 0.0)


def test_grid_space_and_cmaes_refusal():
    spec = spec_from_dict(
        _study(
            space={
                "methods": ["task_arithmetic"],
                "vlm_weight": {"low": 0.0, "high": 1.0, "step": 0.5},
                "llm_weight": {"low": 0.5, "high": 1.0, "step": 0.25},
            },
            sampler={"name": "grid"},
        )
    )
    space = SearchSpace(spec, MODELS)
    assert space.grid() == {"vlm_weight": [0.0, 0.5, 1.0], "llm_weight": [0.5, 0.75, 1.0]}
    assert space.grid_size() == 9
    from search.study.samplers import make_sampler

    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    cells = set()
    for _ in range(9):
        t = study.ask()
        r = space.suggest(t)
        cells.add((r["vlm_weight"], r["llm_weight"]))
        study.tell(t, 0.0)
    assert len(cells) == 9 and study.sampler.is_exhausted(study)


def test_samplers_and_pruners_build():
    from search.study.pruners import make_pruner
    from search.study.samplers import make_sampler

    kinds = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }
    for name, cls in kinds.items():
        assert isinstance(make_sampler(spec_from_dict(_study(sampler={"name": name}))), cls)
    cm = spec_from_dict(_study(sampler={"name": "cmaes"}))
    assert isinstance(make_sampler(cm), optuna.samplers.CmaEsSampler)
    assert isinstance(make_pruner(spec_from_dict(_study())), optuna.pruners.SuccessiveHalvingPruner)
    hb = make_pruner(spec_from_dict(_study(pruner={"name": "hyperband"})), n_steps=8)
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    with pytest.raises(StudySpecError, match="sampler.options"):
        make_sampler(spec_from_dict(_study(sampler={"name": "random", "options": {"bogus": 1}})))


def test_storage_masks_password_and_checks_paths(tmp_path):
    assert mask_url("postgresql+psycopg2://me:s3cret@db:5432/x") == "postgresql+psycopg2://me:***@db:5432/x"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="cannot create its folder"):
        check_storage_url(f"sqlite:///{blocker}/sub/study.db")
    with pytest.raises(StorageError, match="not a usable database URL"):
        check_storage_url("nosuchdb://x/y")
    url = "postgresql+psycopg2://me:s3cret@127.0.0.1:1/x"  # nothing listens on port 1
    spec = spec_from_dict(_study(storage=url))
    with pytest.raises(StorageError) as err:
        open_study(spec)
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


def test_open_study_roundtrip_and_directions(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    spec = spec_from_dict(_study(storage=url))
    with pytest.raises(StorageError, match="no study named"):
        open_study(spec, create=False)
    s = open_study(spec)
    t = s.ask()
    s.tell(t, 0.25)
    again = open_study(spec, create=False)
    assert [x.value for x in again.trials] == [0.25]
    multi = spec_from_dict(_study(storage=url, objectives={"mode": "multi"}, pruner={"name": "none"}))
    with pytest.raises(StorageError, match="directions"):
        open_study(multi)


def test_one_read_per_suggestion_leaves_tpe_suggestions_unchanged(tmp_path):
    """Twin SQLite studies with the study's TPE (multivariate, group, constant liar) and three trials
    always running: the suggestions made inside ``trials_read_once`` equal those made without it, trial
    for trial, while the store is read once per suggestion instead of several times."""
    from search.study.storage import trials_read_once

    space_of = {}
    studies, reads = [], []
    for i, once in enumerate((False, True)):
        spec = spec_from_dict(
            _study(
                name=f"twin{i}",
                storage=f"sqlite:///{tmp_path}/twin{i}.db",
                seed=3,
                n_trials=40,
                space=TOY_SPACE,  # conditional parameters: several TPE groups
            )
        )
        study = open_study(spec)
        backend = study._storage._backend
        count = [0]
        read = backend._get_trials

        def counted(*args, _read=read, _count=count, **kwargs):
            _count[0] += 1
            return _read(*args, **kwargs)

        backend._get_trials = counted
        studies.append((study, once, count))
        space_of[i] = SearchSpace(spec, MODELS)
    for i, (study, once, count) in enumerate(studies):
        running, suggested, per_ask = [], [], []
        for n in range(30):
            if n % 7 == 0:  # an enqueued trial now and then, as baselines and retries are
                study.enqueue_trial({"method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.0})
            before = count[0]
            if once:
                with trials_read_once(study):
                    trial = study.ask()
                    suggested.append(space_of[i].suggest(trial))
            else:
                trial = study.ask()
                suggested.append(space_of[i].suggest(trial))
            per_ask.append(count[0] - before)
            running.append(trial)
            if len(running) > 3:
                done = running.pop(0)
                study.tell(done, (n * 37 % 11) / 11)  # values that favour some regions
        reads.append((suggested, per_ask))
    (plain, plain_reads), (once, once_reads) = reads
    assert once == plain
    assert max(once_reads) == 1 and min(plain_reads[12:]) >= 3  # TPE past its start-up trials


def test_mergekit_export_linear_schedule_and_components():
    r = {
        "vlm": "/m/vlm",
        "llm": "/m/llm",
        "method": "linear",
        "weight": 0.4,
        "components": ["attention"],
        "schedule": {"shape": "linear"},
    }
    cfg = mergekit_config(r, n_layers=5)
    assert cfg["merge_method"] == "linear"
    vlm, llm = cfg["models"]
    att_llm = next(e for e in llm["parameters"]["weight"] if e.get("filter") == "self_attn")
    att_vlm = next(e for e in vlm["parameters"]["weight"] if e.get("filter") == "self_attn")
    want = [0.4 * i / 4 for i in range(5)]  # weight · r(i), r linear
    assert att_llm["value"] == pytest.approx(want)
    assert att_vlm["value"] == pytest.approx([1 - w for w in want])
    assert llm["parameters"]["weight"][-1] == {"value": 0.0}  # outside the components: the VLM's
    assert not any(e.get("filter") == "mlp" for e in llm["parameters"]["weight"])


def test_mergekit_export_ties_and_refusals():
    r = {
        "vlm": "/v",
        "llm": "/l",
        "base": "/b",
        "method": "ties",
        "vlm_weight": 1.6,
        "llm_weight": 0.2,
        "density": 0.2,
    }
    cfg = mergekit_config(r, n_layers=2)
    assert cfg["merge_method"] == "ties" and cfg["base_model"] == "/b"
    assert cfg["models"][0]["parameters"] == {"weight": 1.6, "density": 0.2}
    assert cfg["parameters"]["normalize"] is True
    with pytest.raises(ExportError, match="components"):
        mergekit_config({**r, "components": ["attention"]}, n_layers=2)
    with pytest.raises(ExportError, match="inverse_density"):
        mergekit_config({**r, "method": "dare_linear", "rescale": "inverse_density"}, n_layers=2)
    with pytest.raises(ExportError, match="compat"):
        mergekit_config({**r, "compat": "vlm_merging"}, n_layers=2)


def test_export_json_roundtrip(tmp_path):
    from search.results.export import export_recipe

    r = {
        "vlm": "/v",
        "llm": "/l",
        "base": "/b",
        "method": "task_arithmetic",
        "vlm_weight": 0.5,
        "llm_weight": 1.0,
    }
    out = export_recipe(r, tmp_path / "r.json")
    back = Recipe.from_json(out.read_text())
    assert back == Recipe.from_dict(r) and back.id == Recipe.from_dict(r).id
    assert json.loads(out.read_text())["vlm_weight"] == 0.5
