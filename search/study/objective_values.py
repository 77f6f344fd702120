"""The running objective of a trial from its per-item records: shared by the coordinator (reports, tells)
and the workers (successive halving's gate, ``search.engine.gate``), so both compute the same float."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.study.spec import StudySpec


def running_scores(records: list[dict[str, Any]], datasets: tuple[str, ...]) -> dict[str, float]:
    """Accuracy per dataset over the records so far: correct / scored items (datasets with items only)."""
    n: dict[str, int] = {}
    c: dict[str, int] = {}
    for r in records:
        n[r["dataset"]] = n.get(r["dataset"], 0) + 1
        c[r["dataset"]] = c.get(r["dataset"], 0) + int(bool(r["correct"]))
    return {d: c[d] / n[d] for d in datasets if n.get(d)}


def weighted_value(scores: dict[str, float], weights: dict[str, float]) -> float:
    """``sum_d w_d·acc_d / sum_d w_d`` over the datasets in ``scores``, in the order of ``weights``."""
    names = [d for d in weights if d in scores]
    wsum = sum(weights[d] for d in names)
    return sum(weights[d] * scores[d] for d in names) / wsum if wsum > 0 else 0.0


def dataset_weights(spec: StudySpec, datasets: tuple[str, ...]) -> dict[str, float]:
    """The study file's weight of each dataset (by its short name), in the workers' dataset order.
    ``constrained`` mode: 1 for the maximised dataset, 0 for the others (they are constraints, not objective)."""
    c = getattr(spec.objectives, "constrained", None)
    if c is not None:
        return {d: float(short_name(d) in c.targets) for d in datasets}
    return {d: weight_of(spec, short_name(d)) for d in datasets}


def weight_of(spec: StudySpec, name: str) -> float:
    """The study file's weight of dataset ``name``; with ``proxy_size`` a weight given to a source dataset
    (``MathVista_MINI``) is also its proxy's (``MathVista_PROXY200``, :func:`objectives.proxy.proxy_name`)."""
    obj = spec.objectives
    if name in obj.weights or not obj.proxy_size:
        return obj.weight(name)
    from objectives.proxy import proxy_name

    source = next((s for s in obj.weights if proxy_name(s, obj.proxy_size) == name), name)
    return obj.weight(source)


def objective_values(scores: dict[str, float], spec: StudySpec, datasets: tuple[str, ...]) -> list[float]:
    """``weighted``: [:func:`weighted_value`]; ``multi``: [acc_d per dataset]; ``constrained``: [the
    maximised dataset's accuracy] (:func:`dataset_weights`)."""
    if spec.objectives.mode == "multi":
        return [scores.get(d, 0.0) for d in datasets]  # complete after the last chunk; only then told
    return [weighted_value(scores, dataset_weights(spec, datasets))]


def short_name(name: str) -> str:
    """A dataset's name as the study file writes it (TSV paths → stem)."""
    return Path(name).stem if name.endswith(".tsv") else name
