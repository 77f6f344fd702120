"""Per-item records of a VLMEvalKit run: its prediction files re-scored by our rules, for paired tests.

VLMEvalKit writes one predictions file per (model, dataset), ``<model>_<dataset>.xlsx`` (``.tsv`` with
``PRED_FORMAT=tsv``), under ``<work_dir>/outputs/<model>/``; its score files hold only totals. Each
predictions file is graded by :func:`objectives.scorer.score_responses` (the builtin backend's rules, no
judge) and written to ``<work_dir>/records.jsonl`` in the builtin backend's format (one line
``{"chunk": "<dataset>:vlmeval-predictions", "records": [ItemRecord...]}`` per dataset), which
:mod:`search.results.evidence` reads for held-out scores and paired gains. So those per-item outcomes are
rule-based: VLMEvalKit's own (judge) overall stays the backend's reported score.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from merge_core.atomic import write_text_atomic
from objectives.datasets import DatasetError

from ..tables import DatasetInfo

# VLMEvalKit dataset class -> our scorer's kind; other classes have no rule here and get no records
SCORED_CLASSES = {"MathVista": "mathvista", "MathVision": "mathvision"}
PREDICTION_SUFFIXES = (".xlsx", ".tsv")
RECORDS_NAME = "records.jsonl"


def find_predictions(out_dir: str | Path, model_name: str, dataset: str) -> Path | None:
    """The newest ``<model>_<dataset>.xlsx|.tsv`` under ``out_dir`` (a regular file; VLMEvalKit's symlinks
    into ``<model>/`` are skipped), None when VLMEvalKit wrote none."""
    names = {f"{model_name}_{dataset}{s}" for s in PREDICTION_SUFFIXES}
    found = [
        p
        for p in Path(out_dir).rglob(f"{model_name}_{dataset}.*")
        if p.name in names and p.is_file() and not p.is_symlink()
    ]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def write_item_records(
    work_dir: str | Path,
    model_name: str,
    infos: Sequence[DatasetInfo],
    data_root: str | Path,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Re-score every MathVista / MathVision predictions file of ``model_name`` against its TSV in
    ``data_root`` and write ``<work_dir>/records.jsonl`` atomically (replacing an older one); returns its
    path, or None when no dataset could be re-scored. A dataset without a predictions file, of another
    class, or whose file does not match its TSV is skipped with a log line: the run's scores stand."""
    from objectives.datasets import load_dataset
    from objectives.predictions import read_predictions
    from objectives.scorer import score_responses

    work_dir = Path(work_dir)
    lines: list[str] = []
    for info in infos:
        kind = SCORED_CLASSES.get(info.cls)
        pred = find_predictions(work_dir / "outputs", model_name, info.name)
        if kind is None or pred is None:
            why = "no rule-based scorer for its class" if kind is None else "no predictions file"
            log(f"VLMEvalKit {info.name}: no per-item records ({why}); no paired tests on it")
            continue
        try:
            dataset = load_dataset(Path(data_root) / f"{info.name}.tsv", kind=kind)
            predictions = read_predictions(pred)
            unknown = [i for i in predictions if i not in dataset.by_index()]
            if unknown:
                raise DatasetError(f"{pred}: index(es) {unknown[:5]} match no item of {dataset.path}")
        except DatasetError as err:
            log(f"VLMEvalKit {info.name}: no per-item records ({err})")
            continue
        records = [r.to_dict() for r in score_responses(dataset, predictions)]
        lines.append(json.dumps({"chunk": f"{info.name}:vlmeval-predictions", "records": records}))
    path = work_dir / RECORDS_NAME
    if not lines:
        path.unlink(missing_ok=True)  # an older run's records would pass for this one's
        return None
    return write_text_atomic(path, "\n".join(lines) + "\n")
