"""Read VLMEvalKit's score files (``*_score.csv`` / ``*_acc.csv``) into overall + per-category accuracy.

VLMEvalKit writes them with ``DataFrame.to_csv(index=False, quoting=csv.QUOTE_ALL)``; the table layout per
dataset class is data in :data:`objectives.full_eval.tables.LAYOUTS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..errors import ScoreFileError, VLMEvalRunError
from ..result import DatasetResult
from ..tables import LAYOUTS, ScoreLayout


def _number(value: object, path: Path, where: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ScoreFileError(
            f"{path}: {where} is {value!r}, not a number; is this a VLMEvalKit score file?"
        ) from None
    if math.isnan(x):
        raise ScoreFileError(f"{path}: {where} is empty (NaN); rerun the evaluation of this dataset")
    return x


def parse_score_file(path: str | Path, dataset_class: str) -> DatasetResult:
    """Parse one score file of a dataset of VLMEvalKit class ``dataset_class``.

    overall = value[overall] / scale, per_category[c] = value[c] / scale (fractions in [0, 1]).
    ``rows`` layout: c ranges over the ``name_col`` rows other than "Overall"; n = its ``tot``.
    ``wide`` layout: the row ``row_col == row_value`` (else the first); c ranges over the numeric columns.
    """
    path = Path(path)
    layout = LAYOUTS.get(dataset_class)
    if layout is None:
        raise ScoreFileError(
            f"{path}: no score-file layout for dataset class {dataset_class!r}; known: {', '.join(sorted(LAYOUTS))}"
        )
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ScoreFileError(
            f"{path}: cannot read as CSV ({err}); delete it and rerun the evaluation"
        ) from None
    if layout.kind == "rows":
        return _parse_rows(df, layout, path)
    return _parse_wide(df, layout, path)


def _parse_rows(df: pd.DataFrame, layout: ScoreLayout, path: Path) -> DatasetResult:
    for col in (layout.name_col, layout.value_col):
        if col not in df.columns:
            raise ScoreFileError(
                f"{path}: column {col!r} missing (has {list(df.columns)}); not a {layout.name_col} score file"
            )
    names = [str(x) for x in df[layout.name_col]]
    if layout.overall_key not in names:
        raise ScoreFileError(f"{path}: no {layout.overall_key!r} row in column {layout.name_col!r}")
    per_category: dict[str, float] = {}
    overall = float("nan")
    n: int | None = None
    for i, name in enumerate(names):
        value = _number(df[layout.value_col].iloc[i], path, f"{layout.value_col} of {name!r}") / layout.scale
        if name == layout.overall_key:
            overall = value
            if layout.count_col and layout.count_col in df.columns:
                n = int(_number(df[layout.count_col].iloc[i], path, f"{layout.count_col} of {name!r}"))
        else:
            per_category[name] = value
    return DatasetResult(overall=overall, per_category=per_category, n=n)


def _parse_wide(df: pd.DataFrame, layout: ScoreLayout, path: Path) -> DatasetResult:
    if len(df) == 0:
        raise ScoreFileError(f"{path}: no rows")
    if layout.overall_key not in df.columns:
        raise ScoreFileError(f"{path}: column {layout.overall_key!r} missing (has {list(df.columns)})")
    row = 0
    if layout.row_col and layout.row_value is not None:
        if layout.row_col not in df.columns:
            raise ScoreFileError(f"{path}: column {layout.row_col!r} missing (has {list(df.columns)})")
        hits = [i for i, v in enumerate(df[layout.row_col]) if str(v) == layout.row_value]
        if not hits:
            raise ScoreFileError(f"{path}: no row with {layout.row_col} == {layout.row_value!r}")
        row = hits[0]
    overall = _number(df[layout.overall_key].iloc[row], path, layout.overall_key) / layout.scale
    skip = {layout.overall_key, *(c for c in (layout.row_col,) if c), *layout.skip_cols}
    per_category: dict[str, float] = {}
    for col in df.columns:
        if col in skip:
            continue
        value = df[col].iloc[row]
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                continue  # a label column (e.g. "Setting"), not a category
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        per_category[str(col)] = float(value) / layout.scale
    return DatasetResult(overall=overall, per_category=per_category, n=None)


def find_score_file(
    run_dir: str | Path,
    model_name: str,
    dataset: str,
    dataset_class: str,
    other_datasets: Iterable[str] = (),
    *,
    newer_than: float | None = None,
) -> Path:
    """The newest score file VLMEvalKit wrote for (model, dataset) anywhere under ``run_dir``.

    Names are ``<model>_<dataset>[_<judge>]<suffix>``; a file of a longer dataset name that starts with
    this one (MathVision vs MathVision_MINI) is excluded using ``other_datasets``; with ``newer_than``
    (a time.time() value) files from earlier runs are ignored, so a run that failed to score a dataset
    cannot be read as the stale result of another judge.
    """
    run_dir = Path(run_dir)
    layout = LAYOUTS[dataset_class]
    prefix = f"{model_name}_{dataset}"
    longer = [f"{model_name}_{d}_" for d in other_datasets if d != dataset and d.startswith(dataset + "_")]
    found: list[Path] = []
    for path in run_dir.rglob(f"{prefix}*"):
        if path.is_symlink() or not path.is_file():
            continue
        name = path.name
        if not any(name.endswith(s) for s in layout.suffixes):
            continue
        rest = name[len(prefix) :]
        if rest[:1] not in ("_",) or any(name.startswith(p) for p in longer):
            continue
        if newer_than is not None and path.stat().st_mtime < newer_than:
            continue
        found.append(path)
    if not found:
        raise VLMEvalRunError(
            f"VLMEvalKit wrote no score file {prefix}_*{'|'.join(layout.suffixes)} under {run_dir}; "
            "see the run log there for the error of this dataset"
        )
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))
