"""A real study on the toy world: Ray workers, real merges, real proxy scoring; then status, export, report.

One Ray runtime is shared by the module; the run uses 2 workers and a small slice of the proxies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from search.cli.main import main as cli_main
from search.run import run_study
from search.study.spec import load_spec
from search.study.storage import open_study
from search.study.trials import baseline_trials, ranked_trials
from tests.conftest import require

LIMIT, CHUNK, TOKENS = 12, 6, 24


def write_study(
    path: Path,
    world,
    *,
    name: str,
    storage: str,
    out: Path,
    n_trials: int,
    extra: str = "",
    pruner: str = "none",
    workers: int = 2,
    limit: int = LIMIT,
    chunk: int = CHUNK,
    mode: str = "weighted",
) -> Path:
    """A study file over the toy world's checkpoints and proxies (explicit paths, as a user would write)."""
    ds = ", ".join(json.dumps(d) for d in world.proxy_datasets)
    path.write_text(
        f"""name = "{name}"
storage = "{storage}"
output_dir = "{out}"
n_trials = {n_trials}
workers = {workers}
seed = 0
[models]
vlm = "{world.vlm}"
llm = "{world.llm}"
base = "{world.base}"
[objectives]
datasets = [{ds}]
data_dir = "{world.data_dir}"
chunk_size = {chunk}
limit = {limit}
max_new_tokens = {TOKENS}
batch_size = {chunk}
mode = "{mode}"
[objectives.generation]
preset = "none"
[space]
methods = ["linear", "task_arithmetic"]
components = [["attention", "mlp", "norm"], ["attention"]]
[pruner]
name = "{pruner}"
[[baselines]]
name = "vlm_alone"
method = "linear"
weight = 0.0
[[baselines]]
name = "ta_0.5_1.0"
method = "task_arithmetic"
vlm_weight = 0.5
llm_weight = 1.0
{extra}
"""
    )
    return path


@pytest.fixture(scope="module")
def shared_ray():
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory, toy_world_ci, shared_ray):
    tmp = tmp_path_factory.mktemp("study")
    path = write_study(
        tmp / "toy.toml",
        toy_world_ci,
        name="toyrun",
        storage=f"sqlite:///{tmp}/s.db",
        out=tmp / "out",
        n_trials=5,
    )
    spec = load_spec(path)
    summary = run_study(spec, live=False, promote=False)
    return spec, summary


def _reference_scores(world, recipe: dict, spec) -> dict[str, float]:
    """Score a recipe outside the search: merge in memory, run the scorer over every item, count."""
    from dataclasses import replace

    from merge_core import Recipe, ResidentMerger
    from objectives.datasets import load_dataset
    from objectives.generation import GenerationConfig
    from objectives.processing import load_processor, register_image_only_processors
    from objectives.scorer import ProxyScorer

    register_image_only_processors()
    merger = ResidentMerger(world.vlm, world.llm, world.base)
    merger.apply(Recipe.from_dict(recipe))
    datasets = [
        replace(d, items=d.items[:LIMIT])
        for d in (load_dataset(n, root=world.data_dir) for n in spec.objectives.datasets)
    ]
    scorer = ProxyScorer(
        merger.model,
        load_processor(world.vlm),
        datasets,
        chunk_size=7,
        generation=GenerationConfig(max_new_tokens=TOKENS, batch_size=3),
    )
    correct: dict[str, list[int]] = {}
    for chunk in scorer.chunks():
        for r in scorer.run_chunk(chunk):
            correct.setdefault(r.dataset, []).append(int(r.correct))
    return {d: sum(v) / len(v) for d, v in correct.items()}, merger


def test_study_completes_with_trial_records(toy_study):
    spec, summary = toy_study
    study = open_study(spec, create=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert summary.finished_here == 5 and summary.stop_reason == "n_trials reached"
    # each call's CPU time on its worker thread: most of its wall time (the workers merged and scored), never more
    assert 0.3 * summary.worker_busy_s < summary.worker_cpu_s <= summary.worker_busy_s + 0.01
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["vlm_alone", "ta_0.5_1.0"]
    workers = set()
    for t in trials:
        ua = t.user_attrs
        assert set(ua["scores"]) == set(spec.objectives.datasets)
        assert ua["n_items"] == 2 * LIMIT and ua["eval_s"] > 0 and ua["merge_s"] >= 0
        # the objective is the plain mean of the per-dataset accuracies (equal weights)
        assert t.value == pytest.approx(sum(ua["scores"].values()) / 2)
        lines = (spec.output_dir / "records" / f"trial_{t.number}.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        for d, acc in ua["scores"].items():
            mine = [r["correct"] for r in recs if r["dataset"] == d]
            assert len(mine) == LIMIT and sum(mine) / LIMIT == pytest.approx(acc)
        workers.add(ua["worker"])
    assert len(workers) == 2  # both workers took trials (asynchronous dispatch)


def test_scores_match_an_independent_evaluation(toy_study, toy_world_ci):
    spec, _ = toy_study
    study = open_study(spec, create=False)
    # the sampled trial with the highest value and a baseline: re-merge and re-score outside the search
    for t in (ranked_trials(study)[0], baseline_trials(study)["ta_0.5_1.0"]):
        ref, _ = _reference_scores(toy_world_ci, t.user_attrs["recipe"], spec)
        assert ref == pytest.approx(t.user_attrs["scores"]), t.number


def test_status_export_and_bitwise_remerge(toy_study, toy_world_ci, tmp_path, capsys):
    from safetensors.torch import load_file

    spec, _ = toy_study
    study = open_study(spec, create=False)
    assert cli_main(["status", str(spec.path)]) == 0
    out = capsys.readouterr().out
    assert "COMPLETE 5" in out and "vlm_alone" in out
    best = ranked_trials(study)[0]
    assert cli_main(["export", str(spec.path), "--out", str(tmp_path / "r.json")]) == 0
    exported = json.loads((tmp_path / "r.json").read_text())
    from merge_core import Recipe

    assert Recipe.from_dict(exported).id == best.user_attrs["recipe_id"]
    provenance = json.loads((tmp_path / "r.provenance.json").read_text())  # how it was scored, beside it
    assert provenance["trial"] == best.number and provenance["recipe_id"] == best.user_attrs["recipe_id"]
    generation = provenance["generation"]
    assert generation == best.user_attrs["generation"]
    assert generation["max_new_tokens"] == TOKENS and generation["min_pixels"] is None
    # mergesearch merge of the exported JSON gives the very weights the worker scored
    assert cli_main(["merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    _, merger = _reference_scores(toy_world_ci, exported, spec)
    live = {k: v for k, v in merger.model.state_dict().items()}
    disk = {}
    for f in sorted((tmp_path / "m").glob("*.safetensors")):
        disk.update(load_file(f))
    from transformers import AutoModelForImageTextToText

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, live[name]), name
    assert disk  # weights were written as safetensors
    assert cli_main(
        [
            "export",
            str(spec.path),
            "--trial",
            str(best.number),
            "--format",
            "mergekit",
            "--out",
            str(tmp_path / "r.yaml"),
        ]
    ) in (0, 2)
    assert cli_main(["export", str(spec.path), "--trial", "999", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_report_renders_in_headless_chromium(toy_study, tmp_path):
    spec, _ = toy_study
    out = tmp_path / "report.html"
    assert cli_main(["report", str(spec.path), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("<section class='plot'") >= 5 and '<script src="http' not in page  # plotly.js inline
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    require(browser is not None, "headless Chromium is not installed (apt-get install chromium)")
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=15000",
        "--window-size=1300,4000",
    ]
    dom = subprocess.run(
        common + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    shot = tmp_path / "report.png"
    subprocess.run(common + [f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120)
    sections = dom.split('<section class="plot"')[1:]
    assert len(sections) >= 5
    for sec in sections:
        title = sec.split('data-title="', 1)[1].split('"', 1)[0]
        if "not drawn" in sec.split("</section>", 1)[0]:
            continue
        body = sec.split("</section>", 1)[0]
        assert "plotly" in body and "<svg" in body and "main-svg" in body, f"plot {title!r} did not render"
    drawn = [s for s in sections if "main-svg" in s.split("</section>", 1)[0]]
    assert len(drawn) >= 4
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_bad_inputs_fail_before_ray_starts(tmp_path, toy_world_ci, capsys):
    import ray

    was = ray.is_initialized()
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = {
        "storage": write_study(
            tmp_path / "a.toml",
            toy_world_ci,
            name="a",
            storage=f"sqlite:///{blocker}/x/s.db",
            out=tmp_path / "oa",
            n_trials=2,
        ),
        "models.vlm": write_study(
            tmp_path / "b.toml",
            toy_world_ci,
            name="b",
            storage=f"sqlite:///{tmp_path}/b.db",
            out=tmp_path / "ob",
            n_trials=2,
        ),
    }
    cases["models.vlm"].write_text(
        cases["models.vlm"].read_text().replace(str(toy_world_ci.vlm), "/nonexistent/vlm")
    )
    for what, path in cases.items():
        assert cli_main(["run", str(path), "--no-live"]) == 2
        err = capsys.readouterr().err
        assert what.split(".")[0] in err and "Traceback" not in err, err
        assert ray.is_initialized() == was  # no Ray started (or stopped) for a bad study
    assert not (tmp_path / "b.db").exists()


def test_multi_objective_study_pareto_front(tmp_path, toy_world_ci, shared_ray, capsys):
    path = write_study(
        tmp_path / "m.toml",
        toy_world_ci,
        name="multi",
        storage=f"sqlite:///{tmp_path}/m.db",
        out=tmp_path / "out",
        n_trials=3,
        mode="multi",
        limit=6,
        chunk=6,
    )
    spec = load_spec(path)
    run_study(spec, live=False, promote=False)
    study = open_study(spec, create=False)
    trials = study.get_trials()
    assert len(study.directions) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # one objective per dataset, in the study file's order
        assert t.values == [t.user_attrs["scores"][d] for d in spec.objectives.datasets]
    front = {t.number for t in study.best_trials}
    assert cli_main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out
    assert cli_main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "data-title='Pareto front'" in page and front


def test_dashboard_serves_the_study(toy_study, tmp_path):
    import os
    import socket
    import sys
    import time
    import urllib.request

    spec, _ = toy_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli.main", "dashboard", str(spec.path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body, t0 = None, time.time()
        while time.time() - t0 < 90 and body is None:
            assert proc.poll() is None, proc.stderr.read()
            try:
                body = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read().decode()
                )
            except OSError:
                time.sleep(0.5)
        assert body is not None and "toyrun" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert os.path.exists(spec.output_dir)
    assert cli_main(["dashboard", str(tmp_path / "missing.toml")]) == 2
