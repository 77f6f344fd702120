"""VLMEvalKit score files in their exact format -> overall + per-category accuracies.

The fixtures are written the way VLMEvalKit (ms-vlmeval 0.0.20) writes them: ``MathVista_acc`` /
``MATH_V_acc`` / ``report_acc`` / ``ImageVQADataset.evaluate`` build the table, ``dump`` calls
``DataFrame.to_csv(index=False, quoting=csv.QUOTE_ALL)``. Expected values are computed from the per-item
records directly, not from the CSV.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from objectives.full_eval.errors import ScoreFileError, VLMEvalRunError
from objectives.full_eval.vlmeval.scores import find_score_file, parse_score_file

# (task, skills, correct) per item, like MathVista testmini rows after judging.
MATHVISTA_ITEMS = [
    ("figure question answering", ["statistical reasoning"], True),
    ("figure question answering", ["statistical reasoning", "arithmetic reasoning"], False),
    ("math word problem", ["arithmetic reasoning"], True),
    ("math word problem", ["arithmetic reasoning", "algebraic reasoning"], True),
    ("geometry problem solving", ["geometry reasoning", "algebraic reasoning"], False),
    ("geometry problem solving", ["geometry reasoning"], True),
    ("visual question answering", ["numeric commonsense"], False),
]
MATHVISION_ITEMS = [
    ("algebra", True),
    ("algebra", False),
    ("analytic geometry", True),
    ("combinatorics", False),
    ("combinatorics", False),
    ("combinatorics", True),
    ("topology", True),
]


def write_mathvista_score(path: Path, items=MATHVISTA_ITEMS) -> Path:
    """VLMEvalKit's MathVista_acc (Task&Skill rows, Overall first, insertion order) + dump_csv."""
    tot: dict[str, int] = defaultdict(int)
    fetch: dict[str, int] = defaultdict(int)
    hit: dict[str, int] = defaultdict(int)
    for task, skills, ok in items:
        tot["Overall"] += 1
        for s in skills:
            tot[s] += 1
        tot[task] += 1
        fetch["Overall"] += 1
        fetch[task] += 1
        for s in skills:
            fetch[s] += 1
        if ok:
            hit["Overall"] += 1
            hit[task] += 1
            for s in skills:
                hit[s] += 1
    res: dict[str, list] = defaultdict(list)
    for k in tot:
        res["Task&Skill"].append(k)
        res["tot"].append(tot[k])
        res["prefetch"].append(fetch[k])
        res["hit"].append(hit[k])
        res["prefetch_rate"].append(fetch[k] / tot[k] * 100)
        res["acc"].append(hit[k] / tot[k] * 100)
    pd.DataFrame(res).to_csv(path, index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)
    return path


def write_mathvision_score(path: Path, items=MATHVISION_ITEMS) -> Path:
    """VLMEvalKit's MATH_V_acc (Subject rows incl. Overall, sorted by Subject) + dump_csv."""
    tot: dict[str, int] = defaultdict(int)
    hit: dict[str, int] = defaultdict(int)
    for cat, ok in items:
        tot["Overall"] += 1
        tot[cat] += 1
        hit["Overall"] += ok
        hit[cat] += ok
    res: dict[str, list] = defaultdict(list)
    for k in tot:
        res["Subject"].append(k)
        res["tot"].append(tot[k])
        res["prefetch"].append(0)
        res["hit"].append(hit[k])
        res["prefetch_rate"].append(0.0)
        res["acc"].append(hit[k] / tot[k] * 100)
    df = pd.DataFrame(res).sort_values("Subject", ignore_index=True)
    df.to_csv(path, index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)
    return path


def reference(items, key) -> tuple[float, dict[str, float]]:
    """Accuracy overall and per category straight from the item list."""
    per: dict[str, list[bool]] = defaultdict(list)
    for it in items:
        for cat in key(it):
            per[cat].append(it[-1])
    overall = sum(it[-1] for it in items) / len(items)
    return overall, {c: sum(v) / len(v) for c, v in per.items()}


def test_mathvista_score_file(tmp_path: Path) -> None:
    path = write_mathvista_score(tmp_path / "m_MathVista_MINI_gpt-4o-mini_score.csv")
    assert path.read_text().splitlines()[0] == '"Task&Skill","tot","prefetch","hit","prefetch_rate","acc"'
    got = parse_score_file(path, "MathVista")
    overall, per = reference(MATHVISTA_ITEMS, lambda it: [it[0], *it[1]])
    assert got.overall == pytest.approx(overall)
    assert got.n == len(MATHVISTA_ITEMS)
    assert got.per_category == pytest.approx(per)
    assert "Overall" not in got.per_category


def test_mathvision_score_file_sorted_subject_rows(tmp_path: Path) -> None:
    # An upper-case subject sorts before "Overall": the total is found by name, not position.
    items = [("Arithmetic", True), *MATHVISION_ITEMS]
    path = write_mathvision_score(tmp_path / "m_MathVision_MINI_gpt-4o-mini_score.csv", items)
    rows = path.read_text().splitlines()
    assert rows[0] == '"Subject","tot","prefetch","hit","prefetch_rate","acc"'
    assert rows[1].startswith('"Arithmetic"') and rows[2].startswith('"Overall"')
    got = parse_score_file(path, "MathVision")
    overall, per = reference(items, lambda it: [it[0]])
    assert got.overall == pytest.approx(overall)
    assert got.per_category == pytest.approx(per)


def test_literal_mathvision_file(tmp_path: Path) -> None:
    """A file as VLMEvalKit prints it (every cell quoted, percentages)."""
    text = (
        '"Subject","tot","prefetch","hit","prefetch_rate","acc"\n'
        '"Overall","304","120","66","39.473684210526315","21.710526315789473"\n'
        '"algebra","19","7","5","36.84210526315789","26.31578947368421"\n'
        '"solid geometry","16","5","2","31.25","12.5"\n'
    )
    path = tmp_path / "x_MathVision_MINI_gpt-4o-mini_score.csv"
    path.write_text(text)
    got = parse_score_file(path, "MathVision")
    assert got.overall == pytest.approx(66 / 304)
    assert got.per_category == pytest.approx({"algebra": 5 / 19, "solid geometry": 2 / 16})
    assert got.n == 304


def test_mcq_acc_file_is_wide_and_fractional(tmp_path: Path) -> None:
    """report_acc: one row per split, Overall + categories as columns, fractions (MMStar)."""
    hits = {"coarse perception": [1, 0, 1, 1], "math": [0, 1, 0]}
    res = {"split": ["none"], "Overall": [sum(sum(v) for v in hits.values()) / 7]}
    for cat in sorted(hits):
        res[cat] = [sum(hits[cat]) / len(hits[cat])]
    path = tmp_path / "m_MMStar_acc.csv"
    pd.DataFrame(res).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    got = parse_score_file(path, "ImageMCQDataset")
    assert got.overall == pytest.approx(4 / 7)
    assert got.per_category == pytest.approx({"coarse perception": 0.75, "math": 1 / 3})


def test_bad_score_files_name_the_file(tmp_path: Path) -> None:
    wrong = tmp_path / "m_MathVista_MINI_j_score.csv"
    wrong.write_text('"Subject","acc"\n"Overall","50"\n')
    with pytest.raises(ScoreFileError, match="Task&Skill") as err:
        parse_score_file(wrong, "MathVista")
    assert str(wrong) in str(err.value)
    empty_acc = tmp_path / "m_MathVision_MINI_j_score.csv"
    empty_acc.write_text('"Subject","tot","acc"\n"Overall","3",""\n')
    with pytest.raises(ScoreFileError, match="empty"):
        parse_score_file(empty_acc, "MathVision")
    with pytest.raises(ScoreFileError, match="no score-file layout"):
        parse_score_file(wrong, "NoSuchDataset")


def test_find_score_file_tells_mathvision_from_mathvision_mini(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "m"
    run.mkdir(parents=True)
    full = write_mathvision_score(run / "m_MathVision_gpt-4o-mini_score.csv")
    mini = write_mathvision_score(run / "m_MathVision_MINI_gpt-4o-mini_score.csv", MATHVISION_ITEMS[:3])
    (run / "m_MathVision_gpt-4o-mini.xlsx").write_text("not a score file")
    known = ["MathVision", "MathVision_MINI"]
    assert find_score_file(tmp_path, "m", "MathVision", "MathVision", known) == full
    assert find_score_file(tmp_path, "m", "MathVision_MINI", "MathVision", known) == mini
    with pytest.raises(VLMEvalRunError, match="MathVista_MINI"):
        find_score_file(tmp_path, "m", "MathVista_MINI", "MathVista", known)
    os.utime(mini, (1e9, 1e9))  # written by an earlier run
    with pytest.raises(VLMEvalRunError):
        find_score_file(tmp_path, "m", "MathVision_MINI", "MathVision", known, newer_than=1e9 + 1)
