"""Read VLMEvalKit prediction files (``{model}_{dataset}.xlsx`` or ``.tsv``/``.csv``) for offline re-scoring.

A predictions file needs the columns ``index`` and ``prediction``; other columns (VLMEvalKit copies the
dataset's) are ignored. Indices are compared as strings, with spreadsheet floats like ``12.0`` read as ``12``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .datasets import Dataset, DatasetError


class PredictionsError(DatasetError):
    """A predictions file is unreadable, lacks a column, or names items the dataset does not have."""


def _index_str(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_predictions(path: str | Path) -> dict[str, str]:
    """``{index: prediction}`` from a VLMEvalKit predictions file; empty/NaN predictions become ''."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file {path} does not exist")
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            frame = pd.read_excel(path, dtype=object)
        else:
            sep = "," if path.suffix.lower() == ".csv" else "\t"
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise PredictionsError(
            f"{path}: cannot read predictions ({err}); expected VLMEvalKit .xlsx or .tsv"
        ) from err
    missing = [c for c in ("index", "prediction") if c not in frame.columns]
    if missing:
        raise PredictionsError(
            f"{path}: missing column(s) {missing}; VLMEvalKit predictions have index and prediction"
        )
    out: dict[str, str] = {}
    for row_no, (idx, pred) in enumerate(zip(frame["index"], frame["prediction"], strict=True)):
        key = _index_str(idx)
        if not key or key == "nan":
            raise PredictionsError(f"{path}: data row {row_no + 1} has an empty index")
        if key in out:
            raise PredictionsError(f"{path}: index {key} appears twice (data row {row_no + 1})")
        if pred is None or (isinstance(pred, float) and math.isnan(pred)):
            pred = ""
        out[key] = str(pred)
    return out


def check_against(dataset: Dataset, predictions: dict[str, str], path: str | Path) -> list[str]:
    """Raise when a prediction index is not an item of ``dataset``; return the item indices with no prediction."""
    items = dataset.by_index()
    unknown = [i for i in predictions if i not in items]
    if unknown:
        raise PredictionsError(
            f"{path}: prediction index(es) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} match no item of "
            f"{dataset.path}; is this the predictions file of {dataset.name}?"
        )
    return [i for i in items if i not in predictions]
