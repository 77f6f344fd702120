"""Proxy subsets: stratified, deterministic, same TSV format, manifest; `mergesearch proxy make`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from objectives.datasets import DatasetError, load_dataset
from objectives.proxy import allocate, load_manifest, make_proxy, proxy_name
from objectives.tsv import write_tsv
from search.cli.main import main
from tests.test_obj_datasets import digit_image

TASKS = {"figure question answering": 30, "math word problem": 20, "geometry problem solving": 10}


def big_mathvista(path: Path) -> Path:
    rows, index = [], 100
    for task, count in TASKS.items():
        for k in range(count):
            index += 1
            rows.append({
                "index": index,
                # every third row shares the image of the row before it (VLMEvalKit's short image cell)
                "image": str(index - 1) if k % 3 == 2 else digit_image(index % 10),
                "question": f"q{index}", "answer": str(index % 7), "choices": float("nan"),
                "answer_option": float("nan"), "question_type": "free_form", "answer_type": "integer",
                "precision": float("nan"), "unit": float("nan"), "task": task, "skills": "['arithmetic reasoning']",
            })  # fmt: skip
    return write_tsv(rows, path)


def test_allocation_is_proportional_with_largest_remainder() -> None:
    assert allocate({"a": 30, "b": 20, "c": 10}, 12) == {"a": 6, "b": 4, "c": 2}
    assert allocate({"a": 30, "b": 20, "c": 10}, 7) == {"a": 4, "b": 2, "c": 1}  # quotas 3.5, 2.33, 1.17
    assert allocate({"a": 98, "b": 1, "c": 1}, 10) == {"a": 8, "b": 1, "c": 1}  # at least one per stratum
    assert sum(allocate({"x": 5, "y": 3}, 8).values()) == 8


def test_make_proxy_stratified_deterministic_and_vlmeval_format(tmp_path: Path) -> None:
    src = big_mathvista(tmp_path / "MathVista_MINI.tsv")
    with pytest.warns(UserWarning, match="MD5"):  # a known name, but not VLMEvalKit's file
        ds = load_dataset(src, kind="mathvista")
    out = make_proxy(ds, 12, 0, tmp_path / "out")
    assert out.name == "MathVista_PROXY12.tsv" == proxy_name("MathVista_MINI", 12) + ".tsv"
    manifest = load_manifest(out.with_suffix(".manifest.json"))
    # independent reference: per task, the 6/4/2 indices with the smallest sha256(f"0:{index}")
    expected = []
    for task, want in zip(TASKS, (6, 4, 2), strict=True):
        members = [it.index for it in ds.items if it.category == task]
        expected += sorted(members, key=lambda i: hashlib.sha256(f"0:{i}".encode()).digest())[:want]
    order = [it.index for it in ds.items]
    assert manifest["indices"] == sorted(expected, key=order.index)
    assert manifest["strata"] == {
        "figure question answering": 6,
        "geometry problem solving": 2,
        "math word problem": 4,
    }
    assert manifest["source"]["md5"] == hashlib.md5(src.read_bytes()).hexdigest()
    assert manifest["tsv_md5"] == hashlib.md5(out.read_bytes()).hexdigest()
    assert manifest["vlmeval_data_config"] == {
        "MathVista_PROXY12": {"class": "MathVista", "dataset": "MathVista_PROXY12"}
    }
    # same format: columns, and cells of the chosen rows as pandas (VLMEvalKit) reads them
    src_df, sub_df = pd.read_csv(src, sep="\t"), pd.read_csv(out, sep="\t")
    assert list(sub_df.columns) == list(src_df.columns)
    sub = load_dataset(out)
    full = ds.by_index()
    for item in sub.items:
        ref = full[item.index]
        assert (item.question, item.answer, item.category, item.image_b64) == (
            ref.question,
            ref.answer,
            ref.category,
            ref.image_b64,
        )
        assert (
            item.image_b64 and len(item.image_b64) > 64
        )  # references resolved when the target row was left out
    # deterministic: same bytes again; another seed picks other items
    again = make_proxy(ds, 12, 0, tmp_path / "again")
    assert again.read_bytes() == out.read_bytes()
    other = load_manifest(make_proxy(ds, 12, 1, tmp_path / "other").with_suffix(".manifest.json"))
    assert other["indices"] != manifest["indices"] and other["strata"] == manifest["strata"]


def test_too_many_items_is_an_error(tmp_path: Path) -> None:
    ds = load_dataset(big_mathvista(tmp_path / "X.tsv"))
    with pytest.raises(DatasetError, match="cannot take 61 items from 60"):
        make_proxy(ds, 61, 0, tmp_path)
    assert not list(tmp_path.glob("*PROXY*"))


def test_cli_proxy_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    big_mathvista(tmp_path / "MathVista_MINI.tsv")
    monkeypatch.setenv("LMUData", str(tmp_path))
    with pytest.warns(UserWarning, match="MD5"):  # not the real MathVista_MINI
        rc = main(["proxy", "make", "--dataset", "MathVista_MINI", "--n", "10", "--seed", "3"])
    assert rc == 0
    manifest = json.loads((tmp_path / "MathVista_PROXY10.manifest.json").read_text())
    assert manifest["n"] == 10 and manifest["seed"] == 3
    assert "--data-config" in capsys.readouterr().out
    rc = main(["proxy", "make", "--dataset", "MathVision_MINI", "--n", "10"])
    assert rc == 2
    assert "060fe4fa5d868987ce179307bd5f8a33" in capsys.readouterr().err
