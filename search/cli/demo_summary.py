"""The demo's closing lines: the best baseline against the best recipe the search found, and the toy world.

The search's own answer is the best trial the sampler proposed (no ``baseline`` attribute) whose recipe is
none of the baselines'; the baselines are the recipes the user typed in. A sampled trial that draws a
baseline's recipe again (a point on a stepped grid, or the baseline's own parameters) is told the
baseline's value by the recipe cache: it found nothing the user did not type in, so it is not the search's
answer. Both are shown with their proxy score and the gain over the VLM alone (the ``vlm_alone``
baseline), so a run shows whether the search found anything new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.results.evidence_text import fmt_gain
from search.study.trials import baseline_trials, ranked_trials

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.results.evidence import StudyEvidence
    from search.study.spec import StudySpec

REFERENCE = "vlm_alone"


def baseline_recipe_ids(study: optuna.Study) -> set[str]:
    """Recipe ids of every baseline trial of the study, whatever its state."""
    return {
        str(t.user_attrs["recipe_id"])
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("baseline") and t.user_attrs.get("recipe_id")
    }


def best_searched(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial the sampler proposed (not an enqueued baseline) whose recipe is not a
    baseline's (see the module docstring)."""
    typed = baseline_recipe_ids(study)
    return next(
        (
            t
            for t in ranked_trials(study)
            if not t.user_attrs.get("baseline") and t.user_attrs.get("recipe_id") not in typed
        ),
        None,
    )


def best_baseline(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE baseline trial."""
    return next((t for t in ranked_trials(study) if t.user_attrs.get("baseline")), None)


def _describe(recipe: dict[str, Any]) -> str:
    from search.engine.ledger import describe_recipe as describe

    return describe(recipe)


def best_lines(study: optuna.Study, ev: StudyEvidence | None = None) -> list[str]:
    """``best baseline: ...`` and ``best found by the search: ...``, each with its gain over the VLM alone
    in points of the proxy objective (single objective): paired, with its 95% interval and McNemar p-value
    when ``ev`` holds the per-item records (search.results.evidence_text.fmt_gain), else the point difference."""
    if len(study.directions) != 1:
        return []
    ref = baseline_trials(study).get(REFERENCE)
    out = []
    rows = (
        ("best baseline:", best_baseline(study), "none COMPLETE"),
        (
            "best found by the search:",
            best_searched(study),
            "none COMPLETE (a baseline's own recipe drawn again does not count)",
        ),
    )
    for label, t, none in rows:
        if t is None:
            out.append(f"{label:26s} {none}")
            continue
        what = t.user_attrs.get("baseline") or _describe(t.user_attrs.get("recipe", {}))
        gain = ""
        if ref is not None and t.number != ref.number:  # the VLM alone itself: no gain to show
            paired = fmt_gain(ev, t, ref, "proxy") if ev is not None else ""
            if paired:
                gain = f", {paired} over the VLM alone (paired, 95%)"
            else:
                gain = f", {100 * (t.value - ref.value):+.1f} points over the VLM alone"
        out.append(f"{label:26s} trial {t.number} ({what}): proxy {t.value:.4f}{gain}")
    return out


def world_line(spec: StudySpec) -> str | None:
    """Which toy world the demo ran on (weights fingerprint, the CPU and torch that built it)."""
    if spec.models.toy is None:
        return None
    from objectives.toy import build_toy_world
    from objectives.toy.fingerprint import identity_line

    return "toy world:     " + identity_line(build_toy_world(spec.models.toy.seed, size=spec.models.toy.size))
