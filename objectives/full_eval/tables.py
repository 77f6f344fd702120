"""Architecture and benchmark knowledge for VLMEvalKit, as data (add a family or a dataset = add a row).

Sources: VLMEvalKit (ms-vlmeval 0.0.20) ``vlmeval/config.py`` (model classes and the keyword arguments of
the published 7B entries), ``vlmeval/dataset/*.py`` (dataset classes, ``DATASET_MD5``) and the functions
that write the score files (``MathVista_acc``, ``MATH_V_acc``, ``MathVerse_acc``, ``Dynamath.evaluate``,
``report_acc``, ``ImageVQADataset.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from objectives.datasets import KNOWN_DATASETS as _CORE_DATASETS

# config.json ``model_type`` -> VLMEvalKit model class and the kwargs its published entry uses, so that a
# merged Qwen2.5-VL-7B is run exactly like VLMEvalKit's own "Qwen2.5-VL-7B-Instruct".
MODEL_CLASSES: dict[str, dict[str, Any]] = {
    "qwen2_vl": {
        "class": "Qwen2VLChat",
        "kwargs": {"min_pixels": 1280 * 28 * 28, "max_pixels": 16384 * 28 * 28},
    },
    "qwen2_5_vl": {
        "class": "Qwen2VLChat",
        "kwargs": {"min_pixels": 1280 * 28 * 28, "max_pixels": 16384 * 28 * 28, "use_custom_prompt": False},
    },
    "llava_next": {"class": "LLaVA_Next", "kwargs": {}},
    "idefics2": {"class": "IDEFICS2", "kwargs": {}},
}

DEFAULT_DATASETS: tuple[str, ...] = ("MathVista_MINI", "MathVision_MINI")


@dataclass(frozen=True)
class ScoreLayout:
    """How one dataset class writes its score file.

    ``rows``: one row per category, ``name_col`` names it, ``value_col`` holds the accuracy, the row named
    ``overall_key`` is the total (MathVista, MathVision). ``wide``: one row per split/setting, selected by
    ``row_col == row_value`` (the first row when ``row_value`` is None); column ``overall_key`` is the total
    and every other numeric column a category (MCQ ``report_acc``, DynaMath, MathVerse, ImageVQA).
    ``scale`` divides the stored number to get a fraction (100 for percentages).
    """

    kind: str  # "rows" | "wide"
    suffixes: tuple[str, ...]  # file name endings after "<model>_<dataset>_<judge>"
    scale: float
    overall_key: str = "Overall"
    name_col: str = ""
    value_col: str = "acc"
    count_col: str | None = None
    row_col: str | None = None
    row_value: str | None = None
    skip_cols: tuple[str, ...] = field(default_factory=tuple)


LAYOUTS: dict[str, ScoreLayout] = {
    "MathVista": ScoreLayout("rows", ("_score.csv",), 100.0, name_col="Task&Skill", count_col="tot"),
    "MathVision": ScoreLayout("rows", ("_score.csv",), 100.0, name_col="Subject", count_col="tot"),
    "MathVerse": ScoreLayout("wide", ("_score.csv",), 100.0, row_col="split", row_value="Overall"),
    "Dynamath": ScoreLayout("wide", ("_score.csv",), 1.0, row_col="Setting", row_value="Average"),
    "ImageMCQDataset": ScoreLayout("wide", ("_acc.csv",), 1.0, row_col="split"),
    "ImageVQADataset": ScoreLayout("wide", ("_acc.csv",), 100.0, row_col="split"),
}


# Dataset classes VLMEvalKit scores with an LLM answer extractor; it refuses to evaluate them without a
# working judge API (``assert model.working()``), even with ``--judge exact_matching``.
JUDGE_CLASSES: frozenset[str] = frozenset({"MathVista", "MathVision", "MathVerse", "Dynamath"})


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark VLMEvalKit knows: its dataset class and the MD5 VLMEvalKit checks (None: not checked)."""

    name: str
    cls: str
    md5: str | None


# MathVista / MathVision MD5s come from objectives.datasets (one table for the proxy and the full run).
_CLASS_OF_KIND = {"mathvista": "MathVista", "mathvision": "MathVision"}
_DATASET_ROWS: tuple[tuple[str, str, str | None], ...] = (
    *((name, _CLASS_OF_KIND[row["kind"]], row["md5"]) for name, row in _CORE_DATASETS.items()),
    ("MathVerse_MINI", "MathVerse", "5017caca32b7fa110c350a1bea861b65"),
    ("MathVerse_MINI_Vision_Only", "MathVerse", "68a11d4680014ac881fa37adeadea3a4"),
    ("MathVerse_MINI_Vision_Dominant", "MathVerse", "b8fb63852d261ab2aaefba29cc2414d3"),
    ("MathVerse_MINI_Vision_Intensive", "MathVerse", "01cbd35be202bb0c4873a4186a63bc19"),
    ("MathVerse_MINI_Text_Lite", "MathVerse", "19e4b13bdd30b89a03b2e358bcfefa04"),
    ("MathVerse_MINI_Text_Dominant", "MathVerse", "4f5cd2fa6630ea00bb11d6fde1f6fe6a"),
    ("DynaMath", "Dynamath", "b8425ad9a7114571fc9366e013699494"),
    ("MMStar", "ImageMCQDataset", "e1ecd2140806c1b1bbf54b43372efb9e"),
)
KNOWN_DATASETS: dict[str, DatasetInfo] = {n: DatasetInfo(n, c, m) for n, c, m in _DATASET_ROWS}

# A name VLMEvalKit does not ship (a proxy subset, a toy set) gets the class of its prefix and no MD5 check,
# e.g. "MathVista_PROXY200" -> MathVista (VLMEvalKit's --data-config route, see docs/vlmeval.md).
_PREFIX_CLASSES: tuple[tuple[str, str], ...] = (
    ("MathVista", "MathVista"),
    ("MathVision", "MathVision"),
    ("MathVerse", "MathVerse"),
    ("DynaMath", "Dynamath"),
    ("MMStar", "ImageMCQDataset"),
)


def dataset_info(spec: str) -> DatasetInfo:
    """Resolve a dataset argument: a known name, ``NAME=CLASS`` (any VLMEvalKit dataset class), or a name
    whose prefix names the class (custom TSVs such as proxies). Raises KeyError when none applies."""
    if "=" in spec:
        name, cls = (s.strip() for s in spec.split("=", 1))
        known = KNOWN_DATASETS.get(name)
        return DatasetInfo(name, cls, known.md5 if known and known.cls == cls else None)
    if spec in KNOWN_DATASETS:
        return KNOWN_DATASETS[spec]
    for prefix, cls in _PREFIX_CLASSES:
        if spec.startswith(prefix):
            return DatasetInfo(spec, cls, None)
    raise KeyError(spec)
