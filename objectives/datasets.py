"""VLMEvalKit benchmark TSVs (MathVista_MINI, MathVision, MathVision_MINI and proxies of them), read offline.

Conventions reproduced from VLMEvalKit (``vlmeval/dataset/image_base.py`` and ``image_vqa.py``):

* a dataset ``NAME`` is the file ``$LMUData/NAME.tsv`` (``~/LMUData`` when ``LMUData`` is unset);
* ``image`` holds a base64-encoded image; a cell of at most 64 characters is instead the ``index`` of the row
  whose image it shares;
* ``choices`` (and MathVista's ``skills``) are Python-list literals, parsed with :func:`ast.literal_eval`
  (VLMEvalKit ``eval()``\\ s them; we never evaluate file contents);
* MathVista rows carry ``question_type`` (multi_choice | free_form), ``answer_type`` (integer | float | text |
  list), ``answer_option``, ``precision``, ``unit``, ``task``, ``skills``; MathVision rows ``category``.

The MD5s below are the ones VLMEvalKit checks before it uses a file (``DATASET_MD5`` of ``MathVista`` and
``MathVision`` in open-compass/VLMEvalKit ``vlmeval/dataset/image_vqa.py``, commit 00b1c8d4); with another
checksum VLMEvalKit would try to download the file again, so a mismatch is reported as a warning.
"""

from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError

from merge_core.errors import MergesearchError


class DatasetError(MergesearchError):
    """A benchmark file is missing, malformed, or a row of it cannot be used."""


# VLMEvalKit's DATASET_URL / DATASET_MD5 for the datasets this package scores (see module docstring).
KNOWN_DATASETS: dict[str, dict[str, str]] = {
    "MathVista_MINI": {
        "kind": "mathvista",
        "md5": "f199b98e178e5a2a20e7048f5dcb0464",
        "url": "https://opencompass.openxlab.space/utils/VLMEval/MathVista_MINI.tsv",
    },
    "MathVision": {
        "kind": "mathvision",
        "md5": "93f6de14f7916e598aa1b7165589831e",
        "url": "https://opencompass.openxlab.space/utils/VLMEval/MathVision.tsv",
    },
    "MathVision_MINI": {
        "kind": "mathvision",
        "md5": "060fe4fa5d868987ce179307bd5f8a33",
        "url": "https://opencompass.openxlab.space/utils/VLMEval/MathVision_MINI.tsv",
    },
}

KINDS = ("mathvista", "mathvision")
BASE_COLUMNS = ("index", "question", "answer")
# Columns whose presence identifies a kind, and the ones each kind requires.
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "mathvista": ("question_type", "answer_type", "task"),
    "mathvision": ("category",),
}
IMAGE_REF_MAX_CHARS = 64  # VLMEvalKit: an image cell this short names another row's index


@dataclass
class Item:
    """One benchmark row. ``image`` decodes the base64 cell on access (``None`` for text-only rows).

    ``category`` is MathVista's ``task`` or MathVision's ``category``; ``skills`` MathVista's skills list;
    ``precision`` the number of decimals a MathVista float answer is graded at; ``extra`` other columns.
    """

    index: str
    question: str
    answer: str
    image_b64: str | None = None
    choices: list[str] = field(default_factory=list)
    question_type: str = "free_form"
    answer_type: str = "text"
    answer_option: str | None = None
    precision: int | None = None
    unit: str | None = None
    category: str = ""
    skills: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    source: str = ""
    kind: str = ""

    @property
    def image(self) -> Image.Image | None:
        """The row's image as RGB PIL image (decoded now), or None; DatasetError if it does not decode."""
        if not self.image_b64:
            return None
        return decode_image(self.image_b64, where=f"{self.source} row index {self.index}")

    @property
    def is_multiple_choice(self) -> bool:
        """True when the item is graded by option (it has choices)."""
        return bool(self.choices)

    @property
    def correct_option(self) -> str | None:
        """The letter of the correct option (``A`` for the first choice), or None for free-form items."""
        if not self.choices:
            return None
        if self.answer_option:
            opt = self.answer_option.strip().upper()
            return opt if len(opt) == 1 and 0 <= ord(opt) - 65 < len(self.choices) else None
        ans = self.answer.strip()
        if len(ans) == 1 and ans.isalpha() and ord(ans.upper()) - 65 < len(self.choices):
            return ans.upper()
        for i, choice in enumerate(self.choices):
            if str(choice).strip() == ans:
                return chr(65 + i)
        return None


@dataclass
class Dataset:
    """A loaded benchmark: its name (file stem), kind, path, file MD5 and items in file order."""

    name: str
    kind: str
    path: Path
    md5: str
    items: list[Item]

    def __len__(self) -> int:
        return len(self.items)

    def by_index(self) -> dict[str, Item]:
        """Items keyed by their ``index`` string."""
        return {item.index: item for item in self.items}

    def check_images(self) -> None:
        """Decode every image once; DatasetError naming the first row whose image is bad."""
        for item in self.items:
            _ = item.image


def lmu_root(root: str | Path | None = None) -> Path:
    """The VLMEvalKit data directory: ``root``, else ``$LMUData``, else ``~/LMUData``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("LMUData")
    return Path(env).expanduser() if env else Path.home() / "LMUData"


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file's bytes (what VLMEvalKit compares with DATASET_MD5)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def decode_image(cell: str, *, where: str = "image") -> Image.Image:
    """A base64 image cell -> RGB PIL image (fully loaded); DatasetError naming ``where`` if it is not one."""
    try:
        raw = base64.b64decode(cell, validate=False)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(
            f"{where}: the image cell is not a base64-encoded image ({err}); re-export that row"
        ) from err
    return img.convert("RGB")


def resolve_path(name_or_path: str | Path, root: str | Path | None = None) -> tuple[str, Path]:
    """(dataset name, TSV path) for a VLMEvalKit name (``MathVista_MINI``) or an explicit ``.tsv`` path."""
    text = str(name_or_path)
    if text.endswith(".tsv") or os.sep in text or "/" in text:
        path = Path(text).expanduser()
        return path.stem, path
    return text, lmu_root(root) / f"{text}.tsv"


def _missing_message(name: str, path: Path) -> str:
    known = KNOWN_DATASETS.get(name)
    msg = f"dataset file {path} does not exist"
    if known:
        msg += (
            f"; put VLMEvalKit's {name}.tsv there (set LMUData to its directory; download it from "
            f"{known['url']}); VLMEvalKit expects MD5 {known['md5']}"
        )
    else:
        msg += f"; pass a .tsv path, or put {name}.tsv in {path.parent} (the LMUData directory)"
    return msg


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def parse_list_cell(text: str, *, where: str) -> list[str]:
    """A Python-list literal cell (``"['3/11', '8/11']"``) -> list of str; empty/NaN cells -> []."""
    text = text.strip()
    if not text or text.lower() in ("nan", "none"):
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise DatasetError(f"{where}: not a Python list literal ({text[:60]!r}); fix the cell") from err
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise DatasetError(f"{where}: expected a list, got {type(value).__name__} ({text[:60]!r}); fix the cell")


def _parse_skills(text: str, where: str) -> list[str]:
    # VLMEvalKit's MathVista_acc falls back to the raw cell when it is not a list literal.
    try:
        return parse_list_cell(text, where=where)
    except DatasetError:
        return [text.strip()] if text.strip() else []


def _parse_precision(text: str, where: str) -> int | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError as err:
        raise DatasetError(f"{where}: precision {text!r} is not a number; fix the cell") from err
    if not value.is_integer() or value < 0:
        raise DatasetError(f"{where}: precision {text!r} must be a whole number of decimals; fix the cell")
    return int(value)


def infer_kind(columns: list[str], path: Path) -> str:
    """``mathvista`` when MathVista's columns are present, ``mathvision`` when ``category`` is; else error."""
    cols = set(columns)
    if all(c in cols for c in KIND_COLUMNS["mathvista"]):
        return "mathvista"
    if all(c in cols for c in KIND_COLUMNS["mathvision"]):
        return "mathvision"
    raise DatasetError(
        f"{path}: cannot tell the benchmark kind from its columns {sorted(cols)}; MathVista needs "
        f"{list(KIND_COLUMNS['mathvista'])}, MathVision needs {list(KIND_COLUMNS['mathvision'])} (or pass kind=)"
    )


def read_table(path: Path) -> pd.DataFrame:
    """The raw TSV as strings (no type inference, empty cells as ''); DatasetError when unreadable."""
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(
            f"{path}: not a readable VLMEvalKit TSV ({err}); re-export it tab-separated"
        ) from err


def load_dataset(
    name_or_path: str | Path, *, kind: str | None = None, root: str | Path | None = None
) -> Dataset:
    """Load a VLMEvalKit benchmark TSV into :class:`Dataset` (images stay base64 until accessed).

    ``name_or_path``: a name (``$LMUData/<name>.tsv``, else ``~/LMUData``, or ``root``) or a ``.tsv`` path.
    ``kind``: ``mathvista`` | ``mathvision``; inferred from the columns when None.
    Errors (DatasetError): missing file (says where to put it and the MD5 VLMEvalKit expects), missing
    columns, duplicate or empty indices, bad list cells, image references to absent rows.
    """
    name, path = resolve_path(name_or_path, root)
    if not path.is_file():
        raise DatasetError(_missing_message(name, path))
    md5 = file_md5(path)
    known = KNOWN_DATASETS.get(name)
    if known and md5 != known["md5"]:
        warnings.warn(
            f"{path}: MD5 {md5} differs from VLMEvalKit's {known['md5']} for {name}; VLMEvalKit would re-download it",
            stacklevel=2,
        )
    table = read_table(path)
    columns = list(table.columns)
    missing = [c for c in BASE_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {missing}; a VLMEvalKit TSV needs {list(BASE_COLUMNS)}"
        )
    if kind is None:
        kind = known["kind"] if known else infer_kind(columns, path)
    if kind not in KINDS:
        raise DatasetError(f"{path}: unknown kind {kind!r}; use one of {KINDS}")
    need = [c for c in KIND_COLUMNS[kind] if c not in columns]
    if need:
        raise DatasetError(f"{path}: a {kind} TSV needs column(s) {need}; found {columns}")

    records = table.to_dict("records")
    images: dict[str, str] = {}
    for row_no, rec in enumerate(records):
        idx = _cell(rec["index"]).strip()
        if not idx:
            raise DatasetError(f"{path}: data row {row_no + 1} has an empty index; every row needs one")
        if idx in images:
            raise DatasetError(
                f"{path}: index {idx} appears twice (data row {row_no + 1}); indices must be unique"
            )
        images[idx] = _cell(rec.get("image")).strip()
    items = [_make_item(rec, kind, path, images, columns) for rec in records]
    return Dataset(name=name, kind=kind, path=path, md5=md5, items=items)


_ITEM_COLUMNS = {"index", "question", "answer", "image", "choices", "question_type", "answer_type",
                 "answer_option", "precision", "unit", "task", "skills", "category"}  # fmt: skip


def _make_item(
    rec: dict[str, Any], kind: str, path: Path, images: dict[str, str], columns: list[str]
) -> Item:
    idx = _cell(rec["index"]).strip()
    where = f"{path} row index {idx}"
    question = _cell(rec["question"])
    if not question.strip():
        raise DatasetError(f"{where}: empty question; fix or drop the row")
    image = images.get(idx, "")
    if image and len(image) <= IMAGE_REF_MAX_CHARS:
        target = image.split(".")[0] if image.endswith(".0") else image
        if target not in images or len(images[target]) <= IMAGE_REF_MAX_CHARS:
            raise DatasetError(
                f"{where}: image cell {image!r} refers to row index {target}, which has no image"
            )
        image = images[target]
    choices = parse_list_cell(_cell(rec.get("choices")), where=f"{where} column choices")
    item = Item(
        index=idx,
        question=question,
        answer=_cell(rec["answer"]).strip(),
        image_b64=image or None,
        choices=choices,
        source=str(path),
        kind=kind,
        extra={c: _cell(rec[c]) for c in columns if c not in _ITEM_COLUMNS},
    )
    if kind == "mathvista":
        item.question_type = _cell(rec["question_type"]).strip() or "free_form"
        item.answer_type = _cell(rec["answer_type"]).strip() or "text"
        item.answer_option = _cell(rec.get("answer_option")).strip() or None
        item.precision = _parse_precision(_cell(rec.get("precision")), f"{where} column precision")
        item.unit = _cell(rec.get("unit")).strip() or None
        item.category = _cell(rec["task"]).strip()
        item.skills = _parse_skills(_cell(rec.get("skills")), f"{where} column skills")
        if item.question_type == "multi_choice" and not choices:
            raise DatasetError(f"{where}: question_type multi_choice but no choices; fix the choices cell")
        if item.question_type != "multi_choice":
            item.choices = []
    else:
        item.category = _cell(rec["category"]).strip()
        item.question_type = "multi_choice" if choices else "free_form"
    if item.choices and item.correct_option is None:
        raise DatasetError(
            f"{where}: answer {item.answer!r} is neither an option letter nor one of the choices"
        )
    return item
