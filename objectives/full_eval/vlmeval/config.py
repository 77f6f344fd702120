"""Build VLMEvalKit's ``--config`` JSON for one merged checkpoint, and check the data before running.

Config format (VLMEvalKit ``run.py --config``): ``{"model": {NAME: {"class": CLS, "model_path": ABS, ...}},
"data": {DATASET: {"class": DATASET_CLS, "dataset": DATASET}}}``; every image dataset needs its class
(an entry ``{}`` is looked up among *video* datasets only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasetFileError, FullEvalError, ModelFamilyError
from ..tables import KNOWN_DATASETS, MODEL_CLASSES, DatasetInfo, dataset_info


def lmudata_root(root: str | Path | None = None) -> Path:
    """VLMEvalKit's data root: ``root``, else $LMUData, else ~/LMUData (its own rule)."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("LMUData")
    return Path(env).expanduser().resolve() if env else Path.home() / "LMUData"


def model_type_of(model_dir: str | Path) -> str:
    """The ``model_type`` of a checkpoint's config.json (raises ModelFamilyError naming the file)."""
    cfg = Path(model_dir) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise ModelFamilyError(
            f"{cfg}: missing; is {model_dir} a merged checkpoint (merge_core.merge_to_disk)?"
        ) from None
    except json.JSONDecodeError as err:
        raise ModelFamilyError(f"{cfg}: not JSON ({err}); re-merge the checkpoint") from None
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise ModelFamilyError(f"{cfg}: no 'model_type' field; re-merge the checkpoint")
    return model_type


def safe_model_name(text: str) -> str:
    """A VLMEvalKit model key: letters, digits, '-', '.', '_' only (it becomes a directory and file prefix)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def resolve_datasets(names: Sequence[str]) -> list[DatasetInfo]:
    """Dataset arguments -> DatasetInfo (known name, NAME=CLASS, or a known prefix); error lists the options."""
    out: list[DatasetInfo] = []
    for spec in names:
        try:
            out.append(dataset_info(spec))
        except KeyError:
            raise FullEvalError(
                f"dataset {spec!r}: VLMEvalKit class unknown; use one of {', '.join(KNOWN_DATASETS)}, a name "
                "starting with MathVista/MathVision/MathVerse/DynaMath/MMStar, or NAME=VLMEvalKitDatasetClass"
            ) from None
    if len({d.name for d in out}) != len(out):
        raise FullEvalError(f"datasets {list(names)}: a dataset is listed twice")
    return out


def build_config(
    model_dir: str | Path,
    datasets: Sequence[DatasetInfo],
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``--config`` dict: the family's class (MODEL_CLASSES[model_type]) with the absolute model path
    and the published kwargs, updated by ``model_kwargs``; each dataset with its VLMEvalKit class."""
    model_dir = Path(model_dir).resolve()
    model_type = model_type_of(model_dir)
    entry = MODEL_CLASSES.get(model_type)
    if entry is None:
        raise ModelFamilyError(
            f"{model_dir / 'config.json'}: model_type {model_type!r} has no VLMEvalKit class here "
            f"(supported: {', '.join(sorted(MODEL_CLASSES))}); use --backend builtin or add a row to MODEL_CLASSES"
        )
    model: dict[str, Any] = {"class": entry["class"], "model_path": str(model_dir), **entry["kwargs"]}
    model.update(model_kwargs or {})
    return {
        "model": {model_name: model},
        "data": {d.name: {"class": d.cls, "dataset": d.name} for d in datasets},
    }


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file (what VLMEvalKit compares against DATASET_MD5)."""
    h = hashlib.md5()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_data(datasets: Sequence[DatasetInfo], root: Path) -> None:
    """Every dataset TSV exists at ``root/<name>.tsv`` with VLMEvalKit's MD5 where it has one.

    Checked before the (long) run because VLMEvalKit reacts to a missing or different file by downloading,
    which fails offline deep inside the run.
    """
    for d in datasets:
        path = root / f"{d.name}.tsv"
        want = f" (expected MD5 {d.md5})" if d.md5 else ""
        if not path.is_file():
            raise DatasetFileError(
                f"{path}: missing{want}; put VLMEvalKit's {d.name}.tsv there or set $LMUData to the folder holding it"
            )
        if d.md5 and file_md5(path) != d.md5:
            raise DatasetFileError(
                f"{path}: MD5 {file_md5(path)} differs from VLMEvalKit's {d.md5}; VLMEvalKit would re-download it. "
                f"Replace it with the official file, or evaluate it under another name (e.g. {d.name}_LOCAL={d.cls})"
            )
