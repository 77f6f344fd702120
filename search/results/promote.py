"""Promotion: the best trials of a study are merged to disk, evaluated in full, and the scores stored back.

``promote_study(spec)`` takes the K best COMPLETE trials (the Pareto front, at most K, for several
objectives; :func:`search.study.trials.best_trials`) and the study's baselines (the references of the paired
full-set comparisons, :func:`reference_trials`), merges each recipe with ``merge_core.merge_to_disk`` into
``<output_dir>/promoted/<recipe_id>/`` (a complete earlier merge is reused), evaluates it with a full
backend (``objectives.full_eval``: VLMEvalKit or the built-in scorer) in
``<output_dir>/full_eval/<backend>/<recipe_id>/``, and stores the result as the trial's ``full_eval``
attribute ``{backend, label, per_dataset: {name: {overall, per_category, n}}, work_dir, model_dir, datasets}``.

Optuna refuses to modify a finished trial, so the attribute is attached with
:func:`search.study.trials.set_trial_result` (a study user attribute ``trial/<n>/full_eval``) and read with
:func:`search.study.trials.trial_attr`, like every post-search result. Idempotent: a trial that already has
``full_eval`` from the same backend covering the requested datasets is skipped unless ``force``. Resumable: each trial's result is stored
as soon as it is done, merges are atomic and reused, and both backends continue a half-done evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_core.errors import MergesearchError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from objectives.full_eval import Backend
    from search.study.spec import StudySpec

FULL_EVAL_ATTR = "full_eval"


class PromotionError(MergesearchError):
    """Promotion cannot start: nothing to promote, or a bad top-k / backend / dataset setting."""


@dataclass
class PromotionResult:
    """What happened to one promoted trial.

    ``status``: "evaluated" (now), "cached" (had ``full_eval`` already; not re-run without force).
    ``full_eval``: the stored attribute dict. ``values``: the trial's proxy objective value(s).
    """

    trial_number: int
    recipe_id: str
    model_dir: Path
    status: str
    full_eval: dict[str, Any]
    values: list[float] = field(default_factory=list)
    merge_s: float = 0.0
    eval_s: float = 0.0


def is_complete_checkpoint(model_dir: Path) -> bool:
    """A merge that finished: config.json plus at least one safetensors file (merge_to_disk writes into a
    temporary folder and renames it, so a folder at the final path is complete unless edited by hand)."""
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def promotion_datasets(
    spec: StudySpec, datasets: Sequence[str] | None = None
) -> tuple[list[str], str | None]:
    """(dataset names, data root) for the full evaluation.

    Explicit ``datasets`` > ``[promotion] datasets`` > the toy world's full sets (toy studies) >
    MathVista_MINI + MathVision_MINI. The root is the toy world's data dir for toy studies, else
    ``[objectives] data_dir`` (None: $LMUData).
    """
    from objectives.full_eval import DEFAULT_DATASETS

    names = list(datasets or spec.promotion.datasets)
    root = spec.objectives.data_dir
    if spec.models.toy is not None:
        from objectives.toy import build_toy_world

        world = build_toy_world(spec.models.toy.seed, size=spec.models.toy.size)
        root = str(world.data_dir)
        names = names or list(world.datasets)
    return (names or list(DEFAULT_DATASETS)), root


def make_backend(name: str, *, data_root: str | None, log: Callable[[str], None], **options: Any) -> Backend:
    """``objectives.full_eval.get_backend`` with the study's data root and our console as log."""
    from objectives.full_eval import get_backend

    try:
        return get_backend(name, data_root=data_root, log=log, **options)
    except TypeError as err:  # an option the backend does not take (e.g. --vlmeval-python with builtin)
        raise PromotionError(f"backend {name!r}: {err}; see `mergesearch promote --help`") from None


def study_defaults(spec: StudySpec, backend_name: str) -> dict[str, Any]:
    """Backend options taken from the study: the built-in backend decodes and loads exactly as the proxy
    scoring did (chunk size, batch size, every ``[objectives.generation]`` setting, device, dtype), so full
    and proxy scores compare."""
    if backend_name != "builtin":
        return {}
    obj = spec.objectives
    return {
        "chunk_size": obj.chunk_size,
        "batch_size": obj.batch_size,
        "max_new_tokens": obj.max_new_tokens,
        "generation": dict(obj.generation),
        "device": spec.models.device,
        "dtype": spec.models.dtype or "auto",
    }


def select_trials(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The trials to promote: K best (single objective) or the Pareto front, at most K (0: all of it)."""
    from search.study.trials import best_trials, pareto_front

    multi = len(study.directions) > 1
    if top_k < 0 or (top_k == 0 and not multi):
        raise PromotionError(f"top_k = {top_k}: promote at least one trial (--top K or [promotion] top_k)")
    if multi and top_k == 0:
        return best_trials(study, len(pareto_front(study)))
    return best_trials(study, top_k)


def reference_trials(study: optuna.Study, chosen: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The study's COMPLETE baselines not already ``chosen``: evaluated in full too, so the promoted trials
    are compared with them on the same full-set items (paired gains, held-out scores: search.results.evidence)."""
    from search.study.trials import baseline_trials

    have = {t.number for t in chosen}
    return [t for t in baseline_trials(study).values() if t.number not in have]


def promote_study(
    spec: StudySpec,
    *,
    top_k: int | None = None,
    backend: str | Backend | None = None,
    force: bool = False,
    console: Any = None,
    datasets: Sequence[str] | None = None,
    backend_options: dict[str, Any] | None = None,
    study: optuna.Study | None = None,
) -> list[PromotionResult]:
    """Promote the best trials of ``spec``'s study (see the module docstring); returns one result per trial,
    best first. ``backend``: a name ("vlmeval" | "builtin", default ``[promotion] backend``) built with
    ``backend_options``, or a ready backend object. Everything that can be checked (trials, recipes,
    datasets, the backend's environment) is checked before the first merge."""
    from rich.console import Console

    from search.study.storage import open_study
    from search.study.trials import set_trial_result, trial_attr, trial_recipe

    console = console or Console(stderr=True)
    k = spec.promotion.top_k if top_k is None else top_k
    study = study or open_study(spec, create=False, with_sampler=False)
    trials = select_trials(study, k)
    trials += reference_trials(study, trials)
    if not trials:
        raise PromotionError(
            f"study {spec.name!r} has no COMPLETE trial with a recipe to promote; run `mergesearch run` first"
        )
    names, data_root = promotion_datasets(spec, datasets)
    if backend is None or isinstance(backend, str):
        backend_name = backend or spec.promotion.backend
        options = {**study_defaults(spec, backend_name), **(backend_options or {})}
        backend_obj = make_backend(backend_name, data_root=data_root, log=console.print, **options)
    else:
        backend_obj = backend
    recipes = {t.number: trial_recipe(t) for t in trials}  # validates every stored recipe up front
    todo = {
        t.number
        for t in trials
        if force or not _has_result(trial_attr(study, t, FULL_EVAL_ATTR), backend_obj.name, names)
    }
    if todo and hasattr(backend_obj, "check"):
        backend_obj.check(names, vlm_dir=recipes[min(todo)].vlm)

    results: list[PromotionResult] = []
    promoted_root = Path(spec.output_dir) / "promoted"
    for t in trials:
        recipe = recipes[t.number]
        model_dir = promoted_root / recipe.id
        values = list(t.values or [])
        stored = trial_attr(study, t, FULL_EVAL_ATTR)
        if t.number not in todo:
            console.print(
                f"trial {t.number} ({recipe.id}): already promoted with {backend_obj.name}; --force to redo"
            )
            results.append(PromotionResult(t.number, recipe.id, model_dir, "cached", stored, values))
            continue
        t0 = time.perf_counter()
        merge_checkpoint(recipe, model_dir, console=console)
        t1 = time.perf_counter()
        work_dir = Path(spec.output_dir) / "full_eval" / backend_obj.name / recipe.id
        if force and _has_result(stored, backend_obj.name, names) and work_dir.exists():
            # --force means a fresh evaluation: both backends would otherwise resume from the saved
            # predictions / records in this folder. The old folder is kept beside it, not deleted.
            work_dir.rename(work_dir.with_name(f"{work_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        console.print(
            f"trial {t.number} ({recipe.id}): full evaluation with {backend_obj.name} on {', '.join(names)}"
        )
        result = backend_obj.evaluate(model_dir, names, work_dir)
        t2 = time.perf_counter()
        attr = {
            **result.to_dict(),
            "model_dir": str(model_dir.resolve()),
            "datasets": list(names),
            "recipe_id": recipe.id,
            "eval_s": round(t2 - t1, 3),
        }
        set_trial_result(study, t, FULL_EVAL_ATTR, attr)
        results.append(
            PromotionResult(t.number, recipe.id, model_dir, "evaluated", attr, values, t1 - t0, t2 - t1)
        )
    return results


def _has_result(stored: Any, backend_name: str, datasets: Sequence[str]) -> bool:
    """A stored full_eval of this backend that covers every requested dataset (so new datasets re-run)."""
    if not isinstance(stored, dict) or stored.get("backend") != backend_name:
        return False
    return all(name in (stored.get("per_dataset") or {}) for name in datasets)


def merge_checkpoint(recipe: Any, model_dir: Path, *, console: Any) -> Path:
    """``merge_to_disk(recipe, model_dir)`` unless a complete merge is already there (reused)."""
    from merge_core import merge_to_disk

    if is_complete_checkpoint(model_dir):
        console.print(f"{model_dir}: merged checkpoint exists, reused")
        return model_dir
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"merging {recipe.id} into {model_dir}")
    return Path(merge_to_disk(recipe, model_dir, overwrite=model_dir.exists(), progress=False))
