"""`mergesearch score DATASET.tsv PREDICTIONS`: VLMEvalKit .xlsx/.tsv predictions re-scored offline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from search.cli.main import main
from tests.test_obj_datasets import write_mathvision, write_mathvista

# index -> (prediction, hand-graded correctness) for tests.test_obj_datasets.mathvista_rows()
PREDICTIONS = {
    1: ("The correct answer is (B) 8/11.", True),
    2: ("The missing number is 14.", True),
    3: ("1.40", False),
    4: ("The peak is between the years, so the answer is [2007, 2008]", True),
    5: ("No", False),
}


def _frame(preds: dict[int, tuple[str, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"index": list(preds), "question": ["q"] * len(preds), "prediction": [p for p, _ in preds.values()]}
    )


@pytest.mark.parametrize("suffix", [".xlsx", ".tsv"])
def test_score_predictions(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture) -> None:
    data = write_mathvista(tmp_path / "MathVista_T.tsv")
    pred = tmp_path / f"model_MathVista_T{suffix}"
    frame = _frame(PREDICTIONS)
    if suffix == ".xlsx":
        frame.to_excel(pred, index=False)
    else:
        frame.to_csv(pred, sep="\t", index=False)
    out = tmp_path / "results.json"
    assert main(["score", str(data), str(pred), "--kind", "mathvista", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3/5 = 60.00%" in printed
    result = json.loads(out.read_text())
    ds = result["per_dataset"]["MathVista_T"]
    assert (ds["n"], ds["correct"]) == (5, 3)
    # per category by hand: FQA items 1, 4 right; MWP 2 right, 3 wrong; TQA 5 wrong
    assert {c: (v["n"], v["correct"]) for c, v in ds["per_category"].items()} == {
        "figure question answering": (2, 2), "math word problem": (2, 1), "textbook question answering": (1, 0)}  # fmt: skip
    # per skill (items 1: arithmetic+statistical, 2: arithmetic, 3: algebraic, 4: statistical, 5: logical)
    assert {c: (v["n"], v["correct"]) for c, v in ds["per_skill"].items()} == {
        "algebraic reasoning": (1, 0), "arithmetic reasoning": (2, 2), "logical reasoning": (1, 0),
        "statistical reasoning": (2, 2)}  # fmt: skip
    records = {r["index"]: r for r in result["records"]}
    assert {int(k): r["correct"] for k, r in records.items()} == {k: c for k, (_, c) in PREDICTIONS.items()}
    assert records["1"]["extracted"] == "B" and records["5"]["extracted"] == "B"
    assert all(r["why"] for r in records.values())


def test_mathvision_predictions_with_missing_items(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_mathvision(tmp_path / "MathVision_T.tsv")
    pred = tmp_path / "p.tsv"
    _frame({10: ("\\boxed{C}", True), 11: ("So $x = \\frac{1}{3}$.", True)}).to_csv(
        pred, sep="\t", index=False
    )
    out = tmp_path / "r.json"
    assert main(["score", str(data), str(pred), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["per_dataset"]["MathVision_T"]["correct"] == 2
    assert result["unscored_indices"] == ["12"]
    assert "1 item(s) of the dataset have no prediction" in capsys.readouterr().out


def test_bad_predictions_exit_2_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_mathvista(tmp_path / "MathVista_T.tsv")
    pred = tmp_path / "p.tsv"
    _frame({1: ("B", True), 99: ("7", True)}).to_csv(pred, sep="\t", index=False)
    out = tmp_path / "r.json"
    assert main(["score", str(data), str(pred), "--out", str(out)]) == 2
    assert "prediction index(es) ['99'] match no item" in capsys.readouterr().err
    assert not out.exists()
    pd.DataFrame({"index": [1], "answer": ["x"]}).to_csv(pred, sep="\t", index=False)
    assert main(["score", str(data), str(pred)]) == 2
    assert "missing column(s) ['prediction']" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nope.tsv"), str(pred)]) == 2
    assert "does not exist" in capsys.readouterr().err
