"""Reading VLMEvalKit TSVs: every column convention, and clear errors for bad files."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from objectives.datasets import KNOWN_DATASETS, DatasetError, load_dataset
from objectives.tsv import encode_image, write_tsv


def digit_image(value: int, size: int = 28) -> Image.Image:
    """A small deterministic RGB image whose pixels encode ``value`` (distinct per value)."""
    img = Image.new("RGB", (size, size), (value * 20 % 256, 255 - value * 10 % 256, 90))
    img.putpixel((value % size, 3), (0, 0, 0))
    return img


def mathvista_rows() -> list[dict]:
    """Rows in VLMEvalKit's MathVista_MINI layout, exercising each convention once or more."""
    return [
        {"index": 1, "image": digit_image(1), "question": "What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11",
         "answer": "8/11", "choices": "['3/11', '8/11', '6/11', '3/5']", "answer_option": "B", "question_type": "multi_choice",
         "answer_type": "text", "precision": float("nan"), "unit": float("nan"), "task": "figure question answering",
         "skills": "['arithmetic reasoning', 'statistical reasoning']"},
        {"index": 2, "image": "1", "question": "Which number is missing?", "answer": "14", "choices": float("nan"),
         "answer_option": float("nan"), "question_type": "free_form", "answer_type": "integer", "precision": float("nan"),
         "unit": float("nan"), "task": "math word problem", "skills": "['arithmetic reasoning']"},
        {"index": 3, "image": digit_image(3), "question": 'How much money does Luca need? (Unit: $) "quoted"',
         "answer": "1.45", "choices": float("nan"), "answer_option": float("nan"), "question_type": "free_form",
         "answer_type": "float", "precision": 2.0, "unit": "$", "task": "math word problem", "skills": "algebraic reasoning"},
        {"index": 4, "image": digit_image(4), "question": "Between which two years\tis the peak?", "answer": "[2007, 2008]",
         "choices": float("nan"), "answer_option": float("nan"), "question_type": "free_form", "answer_type": "list",
         "precision": float("nan"), "unit": float("nan"), "task": "figure question answering", "skills": "['statistical reasoning']"},
        {"index": 5, "image": digit_image(5), "question": "Is the line straight?", "answer": "Yes", "choices": "['Yes', 'No']",
         "answer_option": "A", "question_type": "multi_choice", "answer_type": "text", "precision": float("nan"),
         "unit": float("nan"), "task": "textbook question answering", "skills": "['logical reasoning']"},
    ]  # fmt: skip


def mathvision_rows() -> list[dict]:
    """Rows in VLMEvalKit's MathVision layout (choices '[]' for free form, letter answers for options)."""
    return [
        {"index": 10, "image": digit_image(0), "question": "How many triangles?", "answer": "C",
         "choices": "['1', '2', '3', '4', '5']", "category": "counting"},
        {"index": 11, "image": digit_image(1), "question": "Find x.", "answer": "\\frac{1}{3}", "choices": "[]",
         "category": "algebra"},
        {"index": 12, "image": "10", "question": "Area?", "answer": "12", "choices": "[]", "category": "metric geometry - area"},
    ]  # fmt: skip


def write_mathvista(path: Path) -> Path:
    return write_tsv(mathvista_rows(), path)


def write_mathvision(path: Path) -> Path:
    return write_tsv(mathvision_rows(), path)


def test_mathvista_conventions(tmp_path: Path) -> None:
    path = write_mathvista(tmp_path / "MathVista_T.tsv")
    ds = load_dataset(path)
    assert (ds.name, ds.kind, len(ds)) == ("MathVista_T", "mathvista", 5)
    items = ds.by_index()
    assert list(items) == ["1", "2", "3", "4", "5"]
    mc, ref, flt, lst, yn = (items[k] for k in "12345")
    assert mc.choices == ["3/11", "8/11", "6/11", "3/5"] and mc.correct_option == "B"
    assert mc.skills == ["arithmetic reasoning", "statistical reasoning"]
    assert mc.category == "figure question answering"
    # an image cell of <= 64 characters is the image of the row with that index
    assert ref.image_b64 == mc.image_b64
    assert ref.image.tobytes() == digit_image(1).tobytes()
    assert ref.choices == [] and ref.answer_type == "integer" and ref.precision is None
    assert flt.precision == 2 and flt.unit == "$" and flt.skills == ["algebraic reasoning"]
    assert flt.question.endswith('"quoted"')
    assert lst.question == "Between which two years\tis the peak?" and lst.answer == "[2007, 2008]"
    assert yn.correct_option == "A" and yn.question_type == "multi_choice"
    assert ds.md5 == __import__("hashlib").md5(path.read_bytes()).hexdigest()


def test_mathvision_conventions_and_lmudata_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mathvision(tmp_path / "MathVision_T.tsv")
    monkeypatch.setenv("LMUData", str(tmp_path))
    ds = load_dataset("MathVision_T")
    assert ds.kind == "mathvision" and ds.path == tmp_path / "MathVision_T.tsv"
    items = ds.by_index()
    assert items["10"].choices == ["1", "2", "3", "4", "5"] and items["10"].correct_option == "C"
    assert items["11"].choices == [] and items["11"].question_type == "free_form"
    assert items["12"].image_b64 == items["10"].image_b64
    assert items["12"].category == "metric geometry - area"


def test_what_vlmevalkit_reads_is_what_we_read(tmp_path: Path) -> None:
    # VLMEvalKit reads with pandas' defaults; our string-typed read must give the same cells.
    path = write_mathvista(tmp_path / "MathVista_T.tsv")
    ref = pd.read_csv(path, sep="\t")
    ds = load_dataset(path)
    for item, (_, row) in zip(ds.items, ref.iterrows(), strict=True):
        assert item.index == str(row["index"])
        assert item.question == row["question"]
        assert item.answer == str(row["answer"])


def test_missing_known_dataset_names_place_name_and_md5(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("MathVista_MINI", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MathVista_MINI.tsv") in msg
    assert "f199b98e178e5a2a20e7048f5dcb0464" in msg and "LMUData" in msg
    for name, md5 in [
        ("MathVision", "93f6de14f7916e598aa1b7165589831e"),
        ("MathVision_MINI", "060fe4fa5d868987ce179307bd5f8a33"),
    ]:
        assert KNOWN_DATASETS[name]["md5"] == md5
        with pytest.raises(DatasetError, match=md5):
            load_dataset(name, root=tmp_path)


def test_known_name_with_other_md5_warns(tmp_path: Path) -> None:
    write_mathvision(tmp_path / "MathVision_MINI.tsv")
    with pytest.warns(UserWarning, match="060fe4fa5d868987ce179307bd5f8a33"):
        ds = load_dataset("MathVision_MINI", root=tmp_path)
    assert len(ds) == 3


def _rows_with(change: dict, index: int = 0) -> list[dict]:
    rows = mathvista_rows()
    rows[index] = {**rows[index], **change}
    return rows


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (_rows_with({"choices": "['3/11', '8/11'"}), r"row index 1 column choices: not a Python list"),
        (_rows_with({"choices": "__import__('os').system('true')"}), r"row index 1 column choices"),
        (_rows_with({"image": "99"}, 1), r"row index 2: image cell '99' refers to row index 99"),
        (_rows_with({"index": 1}, 1), r"index 1 appears twice"),
        (_rows_with({"question": ""}, 2), r"row index 3: empty question"),
        (_rows_with({"precision": "two"}, 2), r"row index 3 column precision"),
        (_rows_with({"answer_option": "Q", "answer": "9/11"}), r"row index 1: answer '9/11' is neither"),
        (_rows_with({"choices": float("nan")}), r"row index 1: question_type multi_choice but no choices"),
    ],
)
def test_malformed_rows_are_named(tmp_path: Path, rows: list[dict], pattern: str) -> None:
    path = write_tsv(rows, tmp_path / "Bad.tsv")
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(path)


def test_missing_columns_and_unknown_kind(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in mathvista_rows()]
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['answer'\]"):
        load_dataset(write_tsv(rows, tmp_path / "NoAnswer.tsv"))
    rows = [{k: v for k, v in r.items() if k != "category"} for r in mathvision_rows()]
    with pytest.raises(DatasetError, match="cannot tell the benchmark kind"):
        load_dataset(write_tsv(rows, tmp_path / "NoKind.tsv"))
    with pytest.raises(DatasetError, match=r"needs column\(s\) \['question_type', 'answer_type', 'task'\]"):
        load_dataset(tmp_path / "NoKind.tsv", kind="mathvista")


def test_undecodable_image_names_its_row(tmp_path: Path) -> None:
    bad = base64.b64encode(b"definitely not a png" * 10).decode()
    path = write_tsv(_rows_with({"image": bad}, 3), tmp_path / "BadImage.tsv")
    ds = load_dataset(path)  # images decode lazily...
    with pytest.raises(DatasetError, match=r"row index 4: the image cell is not a base64-encoded image"):
        ds.check_images()  # ...and check_images (run by the scorer before generating) names the row


def test_encode_image_round_trip() -> None:
    img = digit_image(7)
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_image(img)))).convert("RGB")
    assert decoded.tobytes() == img.tobytes()
