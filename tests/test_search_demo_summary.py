"""``make demo``'s closing summary names the best baseline and the best recipe the search found.

Runs the demo function itself (studies/toy.toml on the "ci" toy world, small budget, one worker) and checks
the printed lines against the study it wrote, read back independently through Optuna.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from rich.console import Console

from objectives.toy.fingerprint import weights_fingerprint
from search.demo import run_demo


def test_demo_prints_best_baseline_and_best_searched_recipe(toy_world_ci, tmp_path):
    console = Console(record=True, width=240)
    out = tmp_path / "demo"
    res = run_demo(size="ci", workers=1, n_trials=6, output_dir=str(out), console=console)
    text = console.export_text()
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and "recipe" in t.user_attrs]
    bases = [t for t in done if t.user_attrs.get("baseline")]
    sampled = [t for t in done if not t.user_attrs.get("baseline")]
    assert {t.user_attrs["baseline"] for t in bases} == {"vlm_alone", "llm_lm_in_vlm"}
    ref = next(t for t in bases if t.user_attrs["baseline"] == "vlm_alone").value
    best_base = max(bases, key=lambda t: (t.value, -t.number))
    (line,) = [x for x in text.splitlines() if x.startswith("best baseline:")]
    assert f"trial {best_base.number} ({best_base.user_attrs['baseline']}): proxy {best_base.value:.4f}" in line
    # the gain is paired on the same items: its point estimate is the difference of the two proxy scores
    assert f"{100 * (best_base.value - ref):+.1f} [" in line and "over the VLM alone (paired, 95%)" in line
    (line,) = [x for x in text.splitlines() if x.startswith("best found by the search:")]
    if sampled:
        best = max(sampled, key=lambda t: (t.value, -t.number))
        assert f"trial {best.number} ({best.user_attrs['recipe']['method']}" in line
        assert f"proxy {best.value:.4f}, {100 * (best.value - ref):+.1f} [" in line
        assert "over the VLM alone (paired, 95%)" in line
        assert res["best_searched"] == best.number
    else:  # every sampled trial pruned: said so
        assert "none COMPLETE" in line
    # the baselines are points of the toy space: the sampler learned from both
    assert all(t.params for t in bases)
    assert weights_fingerprint(toy_world_ci.root)[:16] in text
