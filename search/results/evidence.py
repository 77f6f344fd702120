"""What a study's per-item records say: every score with its interval, paired gains over the baselines,
held-out scores, and the study's answer (the best trial on items the search never saw).

Per-item outcomes (``{dataset: {item index: correct}}``) come from

* the proxy: ``<output_dir>/records/trial_<n>.jsonl`` (one JSON record per scored item, written by the
  coordinator when the trial ends; a pruned trial's records stop at the items it reached);
* the full sets: ``<work_dir>/records.jsonl`` (one line per scored chunk) of the built-in backend, and of
  the VLMEvalKit backend, whose predictions files are re-scored by the same rules
  (:mod:`objectives.full_eval.vlmeval.records`): there the per-item outcomes, hence the paired tests and
  held-out scores, are rule-based, not VLMEvalKit's judge. Without that file (a dataset class we have no
  rule for), full scores get a Wilson interval from ``overall`` and ``n`` where ``n`` is known.

Held-out items: a full dataset less the items of the proxy drawn from it (the proxy manifest's
``indices``, :mod:`objectives.proxy`). The study's answer (:meth:`StudyEvidence.answer`) is the promoted
trial best on the held-out items (a baseline too can be the answer: then no searched recipe did better; in
``constrained`` mode the feasible ones, judged on the held-out items too), else the proxy's best when nothing
was promoted.
Statistics: :mod:`objectives.stats`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_core.errors import MergesearchError
from objectives.stats import Estimate, PairedGain, paired_gain, weighted_accuracy, wilson
from search.study.constrained import constraint_values, is_feasible, stored_constraints
from search.study.objective_values import short_name, weight_of
from search.study.trials import baseline_trials, ranked_trials

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.study.spec import StudySpec

Outcomes = dict[str, dict[str, bool]]  # dataset -> item index -> correct
SCOPES = ("proxy", "full", "held_out")
VLM_ALONE = "vlm_alone"


def read_proxy_outcomes(records_dir: Path, number: int) -> Outcomes | None:
    """A trial's proxy outcomes from ``records_dir/trial_<number>.jsonl`` (None when there is no file)."""
    path = Path(records_dir) / f"trial_{number}.jsonl"
    if not path.is_file():
        return None
    out: Outcomes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            out.setdefault(short_name(str(r["dataset"])), {})[str(r["index"])] = bool(r["correct"])
    return out


def read_full_outcomes(full_eval: Any) -> Outcomes | None:
    """Per-item outcomes of a stored ``full_eval`` (builtin / vlmeval backends: its ``records.jsonl``),
    restricted to the datasets it reports; None for other backends or when the file is gone."""
    if not isinstance(full_eval, dict) or full_eval.get("backend") not in ("builtin", "vlmeval"):
        return None
    path = Path(str(full_eval.get("work_dir", ""))) / "records.jsonl"
    if not path.is_file():
        return None
    names = set(full_eval.get("per_dataset") or {})
    out: Outcomes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            for r in json.loads(line)["records"]:
                name = short_name(str(r["dataset"]))
                if not names or name in names:
                    out.setdefault(name, {})[str(r["index"])] = bool(r["correct"])
    return out


def estimates(outcomes: Outcomes, weights: dict[str, float]) -> tuple[dict[str, Estimate], Estimate]:
    """(Wilson interval per dataset, bootstrap interval of the weighted objective)."""
    per = {d: wilson(sum(v.values()), len(v)) for d, v in outcomes.items() if v}
    w = {d: weights.get(d, 1.0) for d in outcomes}
    return per, weighted_accuracy({d: list(v.values()) for d, v in outcomes.items()}, w)


def compare(
    a: Outcomes, b: Outcomes, weights: dict[str, float]
) -> tuple[dict[str, PairedGain], PairedGain | None]:
    """A against B on the items both have: a paired gain per dataset and for the weighted objective."""
    per: dict[str, PairedGain] = {}
    pa: dict[str, list[bool]] = {}
    pb: dict[str, list[bool]] = {}
    for d in a:
        shared = sorted(set(a[d]) & set(b.get(d, {})))
        if not shared:
            continue
        pa[d], pb[d] = [a[d][i] for i in shared], [b[d][i] for i in shared]
        per[d] = paired_gain({d: pa[d]}, {d: pb[d]}, {d: 1.0})
    if not per:
        return {}, None
    return per, paired_gain(pa, pb, {d: weights.get(d, 1.0) for d in pa})


def held_out(outcomes: Outcomes, proxy_items: dict[str, set[str]]) -> Outcomes:
    """The outcomes less the items the proxies took from each dataset. Only datasets a proxy manifest names
    as its source are kept: for any other, which of its items the search saw is not known."""
    return {
        d: {i: c for i, c in v.items() if i not in proxy_items[d]}
        for d, v in outcomes.items()
        if d in proxy_items
    }


def proxy_manifests(spec: StudySpec) -> dict[str, Any]:
    """{proxy dataset short name: its manifest} for the study's proxies with a manifest beside their TSV
    (a toy study: the manifests in its cached world's data folder; nothing is built here)."""
    from objectives.datasets import resolve_path
    from objectives.proxy import load_manifest

    names, root = list(spec.objectives.datasets), spec.objectives.data_dir
    if spec.models.toy is not None:
        from objectives.toy.build import world_dir

        data = world_dir(spec.models.toy.seed, spec.models.toy.size) / "LMUData"
        root = root or str(data)
        names = names or [p.name[: -len(".manifest.json")] for p in sorted(data.glob("*.manifest.json"))]
    out: dict[str, Any] = {}
    for n in names:
        name, tsv = resolve_path(n, root)
        manifest = tsv.with_name(f"{tsv.stem}.manifest.json")
        if manifest.is_file():
            out[short_name(name)] = load_manifest(manifest)
    return out


def proxy_dataset_names(spec: StudySpec) -> list[str]:
    """The study's dataset names as the proxy records name them: each listed dataset and, with
    ``proxy_size``, the proxy drawn from it (:func:`objectives.proxy.proxy_name`)."""
    from objectives.proxy import proxy_name

    size = spec.objectives.proxy_size
    names = [short_name(d) for d in spec.objectives.datasets]
    return names + ([proxy_name(d, size) for d in names] if size else [])


@dataclass
class Scored:
    """One trial's scores in one scope: per dataset and weighted, each with its interval."""

    per_dataset: dict[str, Estimate]
    weighted: Estimate | None
    outcomes: Outcomes | None  # None: no per-item data (intervals from counts where known)


class StudyEvidence:
    """Intervals, paired comparisons and held-out scores of a study (read once, cached per trial)."""

    def __init__(self, study: optuna.Study, spec: StudySpec | None = None) -> None:
        self.study = study
        self.spec = spec
        self.records_dir = Path(spec.output_dir) / "records" if spec is not None else None
        self.proxy_weights: dict[str, float] = {}
        if spec is not None:  # the weighted objective's weights (constrained mode: shown, not told)
            self.proxy_weights = {n: weight_of(spec, n) for n in proxy_dataset_names(spec)}
        manifests = {}
        if spec is not None:
            try:
                manifests = proxy_manifests(spec)
            except (MergesearchError, OSError, KeyError):  # a moved or foreign manifest: no held-out split
                manifests = {}
        self.proxy_items: dict[str, set[str]] = {}
        self.full_weights: dict[str, float] = {}
        self.source_of: dict[str, str] = {}  # proxy dataset -> the full dataset it was drawn from
        for proxy, m in manifests.items():
            source = short_name(str(m["source"]["name"]))
            self.source_of[proxy] = source
            self.proxy_items.setdefault(source, set()).update(str(i) for i in m["indices"])
            self.full_weights[source] = self.proxy_weights.get(proxy, 1.0)
        self.baselines = baseline_trials(study)
        self._cache: dict[tuple[int, str], Scored] = {}

    @functools.cached_property
    def study_attrs(self) -> dict[str, Any]:
        """The study's user attributes, read once (post-search results such as ``trial/<n>/constraints``)."""
        return dict(self.study.user_attrs)

    # ---------------------------------------------------------------- per trial
    def full_eval(self, trial: FrozenTrial) -> Any:
        """The trial's stored ``full_eval`` (search.results.promote), from the study attributes read once."""
        return trial.user_attrs.get("full_eval") or self.study_attrs.get(f"trial/{trial.number}/full_eval")

    def outcomes(self, trial: FrozenTrial, scope: str) -> Outcomes | None:
        """Per-item outcomes of ``trial`` in ``scope`` (proxy | full | held_out), None when unknown."""
        if scope == "proxy":
            return read_proxy_outcomes(self.records_dir, trial.number) if self.records_dir else None
        full = read_full_outcomes(self.full_eval(trial))
        if full is None or scope == "full":
            return full
        return held_out(full, self.proxy_items)

    def weights(self, scope: str) -> dict[str, float]:
        return self.proxy_weights if scope == "proxy" else self.full_weights

    def scored(self, trial: FrozenTrial, scope: str) -> Scored:
        """Per-dataset Wilson intervals and the weighted bootstrap interval of ``trial`` in ``scope``."""
        key = (trial.number, scope)
        if key not in self._cache:
            oc = self.outcomes(trial, scope)
            if oc is not None and any(oc.values()):
                per, w = estimates(oc, self.weights(scope))
                self._cache[key] = Scored(per, w, oc)
            else:
                self._cache[key] = Scored(self._from_counts(trial, scope), None, None)
        return self._cache[key]

    def _from_counts(self, trial: FrozenTrial, scope: str) -> dict[str, Estimate]:
        """Wilson intervals from stored accuracies and counts (no per-item file)."""
        if scope == "held_out":
            return {}
        if scope == "proxy":
            n_items = int(trial.user_attrs.get("n_items") or 0)
            scores = trial.user_attrs.get("scores") or {}
            n = n_items // max(1, len(scores)) if scores else 0  # equal proxies: the usual layout
            return {d: wilson(round(a * n), n) for d, a in scores.items() if n}
        fe = self.full_eval(trial)
        out = {}
        for d, r in ((fe or {}).get("per_dataset") or {}).items() if isinstance(fe, dict) else ():
            if r.get("n"):
                out[short_name(d)] = wilson(round(float(r["overall"]) * int(r["n"])), int(r["n"]))
        return out

    def gains(
        self, trial: FrozenTrial, baseline: FrozenTrial, scope: str
    ) -> tuple[dict[str, PairedGain], PairedGain | None]:
        """``trial`` against ``baseline`` on their shared items in ``scope`` ({} / None without per-item data)."""
        a, b = self.scored(trial, scope).outcomes, self.scored(baseline, scope).outcomes
        if a is None or b is None:
            return {}, None
        return compare(a, b, self.weights(scope))

    # ---------------------------------------------------------------- the study
    @functools.cache  # noqa: B019
    def promoted(self) -> list[FrozenTrial]:
        """COMPLETE trials with a full evaluation (baselines included), in proxy rank order."""
        return [t for t in ranked_trials(self.study) if isinstance(self.full_eval(t), dict)]

    def rank_value(self, trial: FrozenTrial, scope: str) -> float | None:
        """What ranks trials in ``scope``: the weighted objective (constrained mode: the target dataset)."""
        s = self.scored(trial, scope)
        if self._target() is not None:
            est = next((e for d, e in s.per_dataset.items() if d in self.target_names(scope)), None)
            return None if est is None else est.value
        if s.weighted is not None:
            return s.weighted.value
        if not s.per_dataset:  # no per-item records: the proxy's told value
            return float(trial.value) if scope == "proxy" and len(trial.values or []) == 1 else None
        w = self.weights(scope)
        total = sum(w.get(d, 1.0) for d in s.per_dataset)
        return sum(w.get(d, 1.0) * e.value for d, e in s.per_dataset.items()) / total if total else None

    def _target(self) -> str | None:
        c = getattr(self.spec.objectives, "constrained", None) if self.spec else None
        return c.maximize if c is not None else None

    def target_names(self, scope: str) -> set[str]:
        """Constrained mode: the maximised dataset's names in ``scope`` (full / held-out: the full set its
        proxy was drawn from, by the proxy manifest)."""
        c = getattr(self.spec.objectives, "constrained", None) if self.spec else None
        if c is None:
            return set()
        names = set(c.targets)
        return names if scope == "proxy" else names | {self.source_of.get(n, n) for n in names}

    def feasible(self, trial: FrozenTrial, scope: str = "proxy") -> bool | None:
        """Constrained mode: whether ``trial`` meets the constraints in ``scope`` (None: not constrained /
        the named baseline has no scores there)."""
        return feasibility(self, trial, scope)

    @functools.cache  # noqa: B019 - one evidence object per command; the study does not change under it
    def answer(self) -> tuple[FrozenTrial | None, str]:
        """(the study's best trial, how it was chosen): best held-out score among the promoted trials;
        without held-out data, the best full score; without promotion, the proxy's best."""
        for scope in ("held_out", "full"):
            cands = [t for t in self.promoted() if self.rank_value(t, scope) is not None]
            if self._target() is not None:
                cands = [t for t in cands if self.feasible(t, scope) is not False]
            if cands:
                best = max(cands, key=lambda t: (self.rank_value(t, scope), -t.number))
                what = "held-out items (full set less the proxy's)" if scope == "held_out" else "full sets"
                return best, f"best of {len(cands)} promoted trials on the {what}"
        ranked = ranked_trials(self.study)
        if self._target() is not None:
            ranked = [t for t in ranked if self.feasible(t, "proxy") is not False] or ranked
        if not ranked:
            return None, "no COMPLETE trial"
        return ranked[0], "best on the proxy (not promoted: the proxy's best is biased upward)"

    def answer_scope(self) -> str:
        """The scope the answer was judged on (held_out | full | proxy)."""
        _, how = self.answer()
        return "held_out" if "held-out" in how else "full" if "full sets" in how else "proxy"

    def verdict(self, trial: FrozenTrial, scope: str, baseline: str = VLM_ALONE) -> str:
        """One plain line: the weighted gain over ``baseline`` with its interval and p, or that none beat it."""
        base = self.baselines.get(baseline)
        if base is None or base.number == trial.number:
            return ""
        _, g = self.gains(trial, base, scope)
        if g is None:
            return f"no paired comparison with {baseline} on the {scope.replace('_', '-')} items (no per-item data)"
        where = {"proxy": "proxy", "full": "full sets", "held_out": "held-out items"}[scope]
        if g.significant:
            return (
                f"trial {trial.number} beat {baseline} at 95% on the {where}: {g.gain.as_points(sign=True)} points "
                f"(paired bootstrap), McNemar p = {g.p_value:.2g}"
            )
        return (
            f"no recipe beat the VLM alone at 95% on the {where}: trial {trial.number} {g.gain.as_points(sign=True)} "
            f"points, McNemar p = {g.p_value:.2g}"
            if baseline == VLM_ALONE
            else f"trial {trial.number} did not beat {baseline} at 95% on the {where}: {g.gain.as_points(sign=True)} points"
        )


def feasibility(ev: StudyEvidence, trial: FrozenTrial, scope: str) -> bool | None:
    """Constrained mode: ``trial`` against the named baseline's scores in ``scope`` (proxy: the stored
    constraint values when there are any; full / held-out: the per-dataset accuracies there)."""
    spec = ev.spec
    c = getattr(spec.objectives, "constrained", None) if spec else None
    if c is None:
        return None
    base = ev.baselines.get(c.baseline)
    if scope == "proxy":
        stored = stored_constraints(ev.study, trial, ev.study_attrs)
        if stored:
            return is_feasible(stored)
        if base is None:
            return None
        return is_feasible(
            constraint_values(trial.user_attrs.get("scores") or {}, base.user_attrs.get("scores") or {}, c)
        )
    if base is None:
        return None
    mine, theirs = ev.scored(trial, scope).per_dataset, ev.scored(base, scope).per_dataset
    targets = ev.target_names(scope)
    vals = {
        d: (theirs[d].value - c.within / 100.0) - e.value
        for d, e in mine.items()
        if d not in targets and d in theirs
    }
    return is_feasible(vals)
