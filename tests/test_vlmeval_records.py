"""VLMEvalKit promotions leave per-item records (its predictions re-scored by our rules) that search.results.evidence
reads: held-out items = full set less the proxy's, paired gains recomputed here from the fabricated answers.

The stand-in VLMEvalKit of tests/test_promote_vlmeval.py answers item i right iff i % FAKE_MOD != 0 and
writes its predictions ``<model>_<dataset>.tsv`` in a run folder (plus a link in the model folder).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from transformers import Qwen2VLConfig

from objectives.datasets import load_dataset
from objectives.full_eval import get_backend
from objectives.proxy import load_manifest, make_proxy
from search.results.evidence import compare, held_out, read_full_outcomes
from tests.test_promote_vlmeval import make_fake_vlmeval, save_config


def _write(path: Path, kind: str, n: int) -> None:
    rows = []
    for i in range(1, n + 1):
        row = {"index": str(i), "image": "x" * 80 if i == 1 else "1", "question": f"What is {i}+1?",
               "answer": str(i + 1)}  # fmt: skip
        if kind == "mathvista":
            row.update(question_type="free_form", answer_type="integer", task=["a", "b"][i % 2])
        else:
            row["category"] = ["algebra", "geometry", "counting"][i % 3]
        rows.append(row)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture()
def world(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge")  # MathVista / MATH-V need a judge configured
    data = tmp_path / "LMUData"
    data.mkdir()
    sizes = {"MathVista_TEST": 30, "MathVision_TEST": 21}
    _write(data / "MathVista_TEST.tsv", "mathvista", sizes["MathVista_TEST"])
    _write(data / "MathVision_TEST.tsv", "mathvision", sizes["MathVision_TEST"])
    return data, sizes, make_fake_vlmeval(tmp_path)


def _run(tmp_path: Path, data: Path, python: Path, name: str, mod: int) -> dict:
    model_dir = save_config(Qwen2VLConfig(), tmp_path / "promoted" / name)
    backend = get_backend("vlmeval", python=python, data_root=data, log=lambda s: None, create_env=False,
                          env={"MERGESEARCH_VLMEVAL_CPU": "0", "FAKE_MOD": str(mod)})  # fmt: skip
    return backend.evaluate(model_dir, list(data_names(data)), tmp_path / "work" / name).to_dict()


def data_names(data: Path) -> list[str]:
    return sorted(p.stem for p in data.glob("*.tsv"))


def test_vlmeval_records_give_held_out_scores_and_paired_gains(tmp_path: Path, world) -> None:
    data, sizes, python = world
    merged = _run(tmp_path, data, python, "merged0001", mod=3)
    alone = _run(tmp_path, data, python, "vlmalone01", mod=2)

    lines = [json.loads(x) for x in Path(merged["work_dir"], "records.jsonl").read_text().splitlines()]
    assert sorted(x["chunk"] for x in lines) == [f"{d}:vlmeval-predictions" for d in sorted(sizes)]
    full = read_full_outcomes(merged)
    assert full is not None and {d: len(v) for d, v in full.items()} == sizes
    # the rule-based re-score agrees with the answers the stand-in gave, item by item
    assert all(c == (int(i) % 3 != 0) for v in full.values() for i, c in v.items())

    proxy_items: dict[str, set[str]] = {}
    for d in sizes:
        tsv = make_proxy(load_dataset(data / f"{d}.tsv"), 8, 0, tmp_path / "proxy")
        proxy_items[d] = {str(i) for i in load_manifest(tsv.with_name(f"{tsv.stem}.manifest.json"))["indices"]}
        assert len(proxy_items[d]) == 8
    a, b = held_out(full, proxy_items), held_out(read_full_outcomes(alone), proxy_items)
    assert {d: len(v) for d, v in a.items()} == {d: n - 8 for d, n in sizes.items()}

    per, weighted = compare(a, b, {d: 1.0 for d in sizes})
    for d, n in sizes.items():
        kept = [i for i in range(1, n + 1) if str(i) not in proxy_items[d]]
        diffs = [int(i % 3 != 0) - int(i % 2 != 0) for i in kept]
        assert per[d].gain.n == len(kept) and per[d].gain.value == pytest.approx(sum(diffs) / len(kept))
        assert per[d].a_only == diffs.count(1) and per[d].b_only == diffs.count(-1)
        assert per[d].gain.low <= per[d].gain.value <= per[d].gain.high
    assert weighted is not None


def test_no_records_for_an_unscorable_dataset_and_no_stale_file(tmp_path: Path, world) -> None:
    data, sizes, python = world
    (data / "MathVista_TEST.tsv").write_text("index\tquestion\tanswer\ttask\n1\tq\t2\ta\n")  # no MathVista columns
    (data / "MathVision_TEST.tsv").unlink()
    work = tmp_path / "work" / "m"
    work.mkdir(parents=True)
    (work / "records.jsonl").write_text('{"chunk": "old", "records": []}\n')
    model_dir = save_config(Qwen2VLConfig(), tmp_path / "promoted" / "m")
    logs: list[str] = []
    backend = get_backend("vlmeval", python=python, data_root=data, log=logs.append, create_env=False,
                          env={"MERGESEARCH_VLMEVAL_CPU": "0"})  # fmt: skip
    result = backend.evaluate(model_dir, ["MathVista_TEST"], work).to_dict()
    assert result["per_dataset"]["MathVista_TEST"]["n"] == 1  # VLMEvalKit's own score stands
    assert not (work / "records.jsonl").exists() and read_full_outcomes(result) is None
    assert any("MathVista_TEST: no per-item records" in s for s in logs)
