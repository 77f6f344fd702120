"""Honest results end to end: a toy study on a noisy 20-item proxy, promoted on the full toy sets with the
built-in backend; status, promote, export and the report carry intervals and paired gains, export picks
the best on the held-out items, and "no recipe beat the VLM alone at 95%" is printed exactly when true.

The held-out best and the per-trial verdicts are recomputed here from the files on disk (the proxy
records, the backend's records.jsonl, the proxy manifests) with scipy directly.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest

from search.cli.main import main as cli_main
from search.results import report_evidence as rv
from search.results.evidence import StudyEvidence
from search.results.evidence_text import headline
from search.run import run_study
from search.study.spec import load_spec
from search.study.storage import open_study
from search.study.trials import trial_attr
from tests.conftest import require
from tests.test_search_run import shared_ray, write_study  # noqa: F401  (fixture)

NOISY = 20


@pytest.fixture(scope="module")
def promoted_study(tmp_path_factory, toy_world_ci, shared_ray):  # noqa: F811
    tmp = tmp_path_factory.mktemp("honest")
    full = ", ".join(json.dumps(d) for d in toy_world_ci.datasets)
    path = write_study(
        tmp / "honest.toml",
        toy_world_ci,
        name="honest",
        storage=f"sqlite:///{tmp}/s.db",
        out=tmp / "out",
        n_trials=5,
        limit=NOISY,
        chunk=10,
        # top 3 of 5 with 2 baselines: at least one searched trial is promoted, whichever recipes the
        # asynchronous sampler drew (with top 2, both baselines can lead a 20-item proxy)
        extra=f'[promotion]\ntop_k = 3\nbackend = "builtin"\ndatasets = [{full}]\n',
    )
    spec = load_spec(path)
    run_study(spec, live=False, promote=True)
    return spec


def _proxy(spec, number: int) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {}
    for line in (spec.output_dir / "records" / f"trial_{number}.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(Path(r["dataset"]).stem, {})[r["index"]] = bool(r["correct"])
    return out


def _held_out_items(study, t, world) -> dict[str, dict[str, bool]]:
    """The trial's full-set outcomes from the backend's file, less the items the proxy manifests list."""
    fe = trial_attr(study, t, "full_eval")
    proxy_idx: dict[str, set[str]] = {}
    for m in Path(world.data_dir).glob("*.manifest.json"):
        data = json.loads(m.read_text())
        proxy_idx.setdefault(data["source"]["name"], set()).update(map(str, data["indices"]))
    items: dict[str, dict[str, bool]] = {}
    for line in (Path(fe["work_dir"]) / "records.jsonl").read_text().splitlines():
        for r in json.loads(line)["records"]:
            if str(r["index"]) not in proxy_idx.get(r["dataset"], set()):
                items.setdefault(r["dataset"], {})[str(r["index"])] = bool(r["correct"])
    assert items and all(len(v) for v in items.values())
    return items


def _held_out_value(study, t, world) -> float:
    """Mean over datasets of the held-out accuracy."""
    return float(np.mean([np.mean(list(v.values())) for v in _held_out_items(study, t, world).values()]))


def test_promotion_evaluates_the_top_trials_and_the_baselines(promoted_study):
    study = open_study(promoted_study, create=False)
    ev = StudyEvidence(study, promoted_study)
    promoted = ev.promoted()
    assert {"vlm_alone", "ta_0.5_1.0"} <= {t.user_attrs.get("baseline") for t in promoted}
    for t in promoted:
        held, full = ev.scored(t, "held_out"), ev.scored(t, "full")
        for d, e in full.per_dataset.items():
            n_proxy = len(ev.proxy_items[d])
            assert held.per_dataset[d].n == e.n - n_proxy > 0  # the proxy's items are left out
            assert e.low < e.value < e.high or e.value in (0.0, 1.0)


def test_promote_prints_intervals_rankings_and_the_verdict(promoted_study, capsys):
    assert cli_main(["promote", str(promoted_study.path)]) == 0  # already promoted: cached, printed again
    out = capsys.readouterr().out
    n = len(StudyEvidence(open_study(promoted_study, create=False), promoted_study).promoted())
    assert n in (3, 4, 5) and out.count("already promoted") == n  # the top 3 and the 2 baselines (may overlap)
    assert "proxy ranking" in out and "Spearman(proxy, held-out items)" in out
    assert "best: trial" in out and f"of {n} promoted trials on the held-out items" in out
    assert "beat the VLM alone at 95% on the held-out items" in out  # either "no recipe ..." or "k of n ..."


def test_export_picks_the_held_out_best_and_writes_provenance(promoted_study, toy_world_ci, tmp_path, capsys):
    study = open_study(promoted_study, create=False)
    promoted = StudyEvidence(study, promoted_study).promoted()
    values = {t.number: _held_out_value(study, t, toy_world_ci) for t in promoted}
    best = max(promoted, key=lambda t: (values[t.number], -t.number))
    out = tmp_path / "best.json"
    assert cli_main(["export", str(promoted_study.path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["seed"] == best.user_attrs["recipe"].get("seed", 0)
    from merge_core import Recipe

    assert Recipe.from_dict(json.loads(out.read_text())).id == best.user_attrs["recipe_id"]
    assert "held-out" in capsys.readouterr().out
    prov = json.loads((tmp_path / "best.provenance.json").read_text())
    assert prov["trial"] == best.number
    w = prov["scores"]["held_out"]["weighted"]
    assert w["low"] <= values[best.number] <= w["high"]
    assert w["value"] == pytest.approx(values[best.number])


def test_status_shows_intervals_paired_gains_and_the_honest_verdict(promoted_study, toy_world_ci, capsys):
    from objectives.stats import paired_gain

    assert cli_main(["status", str(promoted_study.path)]) == 0
    out = capsys.readouterr().out
    # over each baseline but the answer itself (the VLM alone can be the answer)
    assert "on the held-out items (paired, 95%)" in out and "  gain over " in out and "pts p=" in out
    assert "Spearman" in out and "best: trial" in out and "held-out items:" in out
    # the verdict, recomputed from the files: paired held-out gains of every promoted trial over vlm_alone
    study = open_study(promoted_study, create=False)
    ev = StudyEvidence(study, promoted_study)
    vlm = ev.baselines["vlm_alone"]
    base = _held_out_items(study, vlm, toy_world_ci)
    won = []
    for t in ev.promoted():
        if t.number == vlm.number:
            continue
        mine = _held_out_items(study, t, toy_world_ci)
        g = paired_gain(
            {d: [mine[d][i] for i in sorted(mine[d])] for d in mine},
            {d: [base[d][i] for i in sorted(mine[d])] for d in mine},
            {d: 1.0 for d in mine},
        )
        if g.significant:
            won.append(t.number)
    n = len(ev.promoted()) - 1
    if won:
        assert f"{len(won)} of {n} recipes beat the VLM alone at 95% on the held-out items" in out
        assert "no recipe beat" not in out
    else:
        assert f"no recipe beat the VLM alone at 95% on the held-out items ({n} compared)" in out


def test_report_shows_intervals_and_renders_in_headless_chromium(promoted_study, tmp_path):
    out = tmp_path / "report.html"
    assert cli_main(["report", str(promoted_study.path), "--out", str(out)]) == 0
    page = out.read_text()
    for title in (
        "Perception vs reasoning",
        "Gain of the top recipes",
        "Per-layer LLM weight",
        "Proxy vs held-out",
        "Parameter importances",
    ):
        assert title in page
    assert "not drawn: 5 complete trials; importances from fewer than 10" in page
    assert "Spearman" in page and "pts p=" in page
    # the gains plot: every promoted searched trial against each baseline, on the held-out items
    study = open_study(promoted_study, create=False)
    ev = StudyEvidence(study, promoted_study)
    searched = [t for t in ev.promoted() if not t.user_attrs.get("baseline")]
    gains = rv.gains_figure(ev)
    assert searched and not isinstance(gains, str)
    named = {(tr.name, tr.xaxis) for tr in gains.data}
    for t in searched:
        for k in range(len(ev.baselines)):  # one panel (x axis) per baseline
            assert (f"trial {t.number} (held-out items)", "x" if k == 0 else f"x{k + 1}") in named
    # "All trials": each trial's proxy accuracy with its Wilson 95% interval, recomputed from its records
    from scipy.stats import binomtest

    table = page.split("<h2>All trials</h2>", 1)[1]
    for t in study.get_trials(deepcopy=False):
        if not (promoted_study.output_dir / "records" / f"trial_{t.number}.jsonl").is_file():
            continue
        for d, v in _proxy(promoted_study, t.number).items():
            k, n = sum(v.values()), len(v)
            ci = binomtest(k, n).proportion_ci(method="wilson")
            assert f"{d}: {k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}]" in table, (t.number, d)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    require(browser is not None, "headless Chromium is not installed (apt-get install chromium)")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    common.append("--window-size=1300,5000")
    dom = subprocess.run(common + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shot = Path("/tmp") / "honest_report.png"
    subprocess.run(common + [f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120)
    sections = {}
    for sec in dom.split('<section class="plot"')[1:]:
        body = sec.split("</section>", 1)[0]
        sections[body.split('data-title="', 1)[1].split('"', 1)[0]] = body
    for title, body in sections.items():
        if "not drawn" not in body:
            assert "main-svg" in body, f"plot {title!r} did not render"
    for key in ("Perception vs reasoning", "Gain of the top recipes", "Per-layer", "Proxy vs held-out"):
        body = next(b for t, b in sections.items() if t.startswith(key))
        assert "main-svg" in body, key
    assert shot.is_file() and shot.stat().st_size > 10_000


def _synthetic_study(tmp_path: Path, gain_items: int, n: int = NOISY):
    """Baseline + one recipe on n items of two datasets; the recipe turns ``gain_items`` wrong items right."""
    from search.study.spec import spec_from_dict

    spec = spec_from_dict(
        {
            "name": "syn",
            "n_trials": 2,
            "output_dir": str(tmp_path),
            "models": {"vlm": "v", "llm": "l", "base": "b"},
            "objectives": {"datasets": ["A_PROXY", "B_PROXY"]},
            "baselines": [{"name": "vlm_alone", "method": "linear", "weight": 0.0}],
        }
    )
    study = optuna.create_study(direction="maximize")
    base = {d: np.arange(n) < n // 2 for d in ("A_PROXY", "B_PROXY")}  # half right, in order
    mine = {}
    for d, b in base.items():
        m = b.copy()
        wrong = np.flatnonzero(~m)[:gain_items]
        m[wrong] = True
        mine[d] = m
    (tmp_path / "records").mkdir(parents=True, exist_ok=True)
    for number, (name, outcome) in enumerate((("vlm_alone", base), (None, mine))):
        recs = [
            {"dataset": d, "index": str(i), "correct": bool(c)} for d, v in outcome.items() for i, c in enumerate(v)
        ]
        (tmp_path / "records" / f"trial_{number}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        attrs = {"recipe": {"method": "linear", "weight": 0.5 * number}, "n_items": 2 * n}
        attrs["scores"] = {d: float(np.mean(v)) for d, v in outcome.items()}
        if name:
            attrs["baseline"] = name
        study.add_trial(optuna.trial.create_trial(value=float(np.mean(list(attrs["scores"].values()))), user_attrs=attrs))
    return StudyEvidence(study, spec), base, mine


def test_a_small_gain_on_a_noisy_proxy_is_not_called_a_gain(tmp_path):
    ev, base, mine = _synthetic_study(tmp_path, gain_items=1)  # one item per dataset: +5 points on 40
    lines = headline(ev)
    assert "no recipe beat the VLM alone at 95% on the proxy (1 compared)" in lines
    assert not any("beat vlm_alone at 95%" in x for x in lines)
    # the interval printed contains the point estimate and zero; the exact McNemar p of 2 discordant pairs
    gain_line = next(x for x in lines if x.startswith("  gain over vlm_alone"))
    assert "+5.0 [" in gain_line and "p=0.5" in gain_line  # binomtest(2, 2): two-sided p = 2 * 0.5**2


def test_a_large_gain_is_reported_with_its_interval(tmp_path):
    ev, base, mine = _synthetic_study(tmp_path, gain_items=8)  # 16 of 40 items turned right
    lines = headline(ev)
    assert any(x.startswith("1 of 1 recipes beat the VLM alone at 95% on the proxy") for x in lines)
    p = 2 * 0.5**16  # McNemar: 16 discordant pairs, all one way
    gain_line = next(x for x in lines if x.startswith("  gain over vlm_alone"))
    assert "+40.0 [" in gain_line and f"p={p:.2g}" in gain_line and gain_line.endswith("*")
    assert math.isclose(p, 3.0517578125e-05)


def test_constrained_study_through_the_coordinator(tmp_path, toy_world_ci, shared_ray, capsys):  # noqa: F811
    """The coordinator sets each trial's constraints at its tell (Optuna stores them); status and the
    report mark every trial feasible or INFEASIBLE, matching the scores against the baseline's here."""
    target = next(d for d in toy_world_ci.proxy_datasets if d.startswith("MathVision"))
    other = next(d for d in toy_world_ci.proxy_datasets if d != target)
    path = write_study(
        tmp_path / "c.toml",
        toy_world_ci,
        name="constrained",
        storage=f"sqlite:///{tmp_path}/c.db",
        out=tmp_path / "out",
        n_trials=4,
        limit=10,
        chunk=10,
        mode="constrained",
        extra="",
    )
    text = path.read_text().replace(
        'mode = "constrained"',
        f'mode = "constrained"\nconstrained = {{ maximize = "{target}", baseline = "vlm_alone", within = 1.0 }}',
    )
    path.write_text(text)
    spec = load_spec(path)
    run_study(spec, live=False, promote=False)
    study = open_study(spec, create=False)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    base = next(t for t in done if t.user_attrs.get("baseline") == "vlm_alone")
    for t in done:
        assert t.value == pytest.approx(t.user_attrs["scores"][target])  # the told value: the target alone
        cons = t.constraints or trial_attr(study, t, "constraints")
        expect = base.user_attrs["scores"][other] - 0.01 - t.user_attrs["scores"][other]
        assert cons == pytest.approx({other: expect})
    assert cli_main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    n_bad = sum(1 for t in done if (t.constraints or trial_attr(study, t, "constraints"))[other] > 0)
    assert out.count("INFEASIBLE") >= n_bad
    assert "yes" in out  # the baseline itself is feasible
    assert cli_main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<th>constraints</th>" in page and page.count("INFEASIBLE</td>") >= n_bad
