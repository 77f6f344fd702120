"""The VLMEvalKit backend: --config generation, data checks, judge settings, and a run through our launcher.

The end-to-end tests run the real launcher (objectives/full_eval/vlmeval/launcher.py) with a separate
interpreter (the base Python, not mergesearch's venv) whose ``vlmeval`` package is a small stand-in for
VLMEvalKit's ``run.py``: it reads our config, echoes the judge key the way VLMEvalKit logs ``judge_kwargs``,
and writes score files in VLMEvalKit's format from the TSVs (an item is answered correctly iff its index is
not a multiple of 3). The real VLMEvalKit runs in ``make test-vlmeval``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from transformers import Idefics2Config, LlavaNextConfig, Qwen2_5_VLConfig, Qwen2Config, Qwen2VLConfig

from objectives.full_eval import get_backend
from objectives.full_eval.errors import (
    DatasetFileError,
    FullEvalError,
    JudgeSettingsError,
    ModelFamilyError,
    VLMEvalEnvError,
    VLMEvalRunError,
)
from objectives.full_eval.judge import JudgeSettings
from objectives.full_eval.tables import dataset_info
from objectives.full_eval.vlmeval.config import build_config, check_data, resolve_datasets
from objectives.full_eval.vlmeval.env import check_python

SECRET = "sk-test-3f9c1e7d5b2a"


def save_config(cfg, path: Path) -> Path:
    cfg.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("cfg", "cls", "pixels"),
    [
        (Qwen2VLConfig(), "Qwen2VLChat", True),
        (Qwen2_5_VLConfig(), "Qwen2VLChat", True),
        (LlavaNextConfig(), "LLaVA_Next", False),
        (Idefics2Config(), "IDEFICS2", False),
    ],
)
def test_config_per_family(tmp_path: Path, cfg, cls: str, pixels: bool) -> None:
    model_dir = save_config(cfg, tmp_path / "abc123")
    infos = resolve_datasets(["MathVista_MINI", "MathVision_MINI", "MMStar"])
    config = build_config(model_dir, infos, model_name="merged-abc123")
    model = config["model"]["merged-abc123"]
    assert model["class"] == cls
    assert model["model_path"] == str(model_dir.resolve()) and Path(model["model_path"]).is_absolute()
    assert ("max_pixels" in model) == pixels
    assert config["data"] == {
        "MathVista_MINI": {"class": "MathVista", "dataset": "MathVista_MINI"},
        "MathVision_MINI": {"class": "MathVision", "dataset": "MathVision_MINI"},
        "MMStar": {"class": "ImageMCQDataset", "dataset": "MMStar"},
    }
    json.dumps(config)  # the --config file is JSON


def test_config_overrides_and_custom_datasets(tmp_path: Path) -> None:
    model_dir = save_config(Qwen2VLConfig(), tmp_path / "m")
    infos = resolve_datasets(["MathVista_PROXY200", "Toy_GQA=ImageVQADataset", "DynaMath"])
    assert [(d.cls, d.md5) for d in infos] == [
        ("MathVista", None),
        ("ImageVQADataset", None),
        ("Dynamath", "b8425ad9a7114571fc9366e013699494"),
    ]
    config = build_config(
        model_dir, infos, model_name="m", model_kwargs={"max_pixels": 784, "max_new_tokens": 16}
    )
    assert config["model"]["m"]["max_pixels"] == 784 and config["model"]["m"]["min_pixels"] == 1280 * 28 * 28
    assert config["data"]["Toy_GQA"] == {"class": "ImageVQADataset", "dataset": "Toy_GQA"}


def test_config_errors(tmp_path: Path) -> None:
    llm_dir = save_config(Qwen2Config(), tmp_path / "llm")
    with pytest.raises(ModelFamilyError, match="qwen2") as err:
        build_config(llm_dir, [], model_name="m")
    assert str(llm_dir / "config.json") in str(err.value)
    with pytest.raises(ModelFamilyError, match="missing"):
        build_config(tmp_path / "nothing", [], model_name="m")
    with pytest.raises(FullEvalError, match="NoSuchBench"):
        resolve_datasets(["NoSuchBench"])
    with pytest.raises(FullEvalError, match="twice"):
        resolve_datasets(["MMStar", "MMStar"])


def test_missing_or_modified_tsv_names_file_and_md5(tmp_path: Path) -> None:
    infos = resolve_datasets(["MathVision_MINI"])
    with pytest.raises(DatasetFileError) as err:
        check_data(infos, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MathVision_MINI.tsv") in msg and "060fe4fa5d868987ce179307bd5f8a33" in msg
    (tmp_path / "MathVision_MINI.tsv").write_text("index\tquestion\tanswer\n1\tq\t2\n")
    with pytest.raises(DatasetFileError, match="differs from VLMEvalKit's 060fe4fa"):
        check_data(infos, tmp_path)
    (tmp_path / "MathVision_LOCAL.tsv").write_text("index\tquestion\tanswer\n")
    check_data([dataset_info("MathVision_LOCAL")], tmp_path)  # custom name: exists, no MD5 to check


def test_judge_settings_go_through_the_environment_only(monkeypatch) -> None:
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    judge = JudgeSettings(
        model="gpt-4o-mini",
        api_base="http://127.0.0.1:8000/v1",
        local_llm="qwen-judge",
        key_env="MY_JUDGE_KEY",
    )
    env = judge.child_env({"PATH": "/bin", "MY_JUDGE_KEY": SECRET})
    assert env["OPENAI_API_KEY"] == SECRET
    assert env["OPENAI_API_BASE"] == "http://127.0.0.1:8000/v1" and env["LOCAL_LLM"] == "qwen-judge"
    assert judge.cli_args() == ["--judge", "gpt-4o-mini"]
    assert SECRET not in json.dumps(judge.public()) and "set" in judge.public()["key"]
    assert judge.redact(f"key={SECRET}!") == "key=***!"


# ------------------------------------------------------------------ a run through the real launcher

FAKE_RUN = r'''
"""Stand-in for vlmeval.run: VLMEvalKit's run.py arguments, logging and score-file formats."""
import argparse, csv, json, os, sys
from collections import defaultdict


def load_env():
    pass


def _dump(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(header)
        w.writerows(rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config"); p.add_argument("--work-dir"); p.add_argument("--judge")
    p.add_argument("--reuse", action="store_true")
    args = p.parse_args()
    cfg = json.load(open(args.config))
    key = os.environ.get("OPENAI_API_KEY", "")
    print({"model": args.judge or "gpt-4o-mini", "nproc": 4, "key": key}, flush=True)  # run.py logs judge_kwargs
    if os.environ.get("FAKE_FAIL"):
        print(f"openai.AuthenticationError: Incorrect API key provided: {key}", flush=True)
        sys.exit(1)
    judge = args.judge or "gpt-4o-mini"
    for model_name, m in cfg["model"].items():
        assert os.path.isabs(m["model_path"]) and os.path.isfile(os.path.join(m["model_path"], "config.json"))
        out = os.path.join(args.work_dir, model_name)
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
        with open(os.path.join(out, "logs", "run.log"), "w") as f:
            f.write(f"judge_kwargs: {{'key': '{key}'}}\n")
        if os.environ.get("FAKE_SKIP"):  # VLMEvalKit catches a dataset's exception, records it, goes on
            err = f"MathVista evaluation requires a working OPENAI API (key {key})\n\nTo debug ..."
            status = {"datasets": {ds: {"status": "done", "error_message": err} for ds in cfg["data"]}}
            json.dump(status, open(os.path.join(out, "status.json"), "w"))
            continue
        for ds, d in cfg["data"].items():
            rows = list(csv.DictReader(open(os.path.join(os.environ["LMUData"], ds + ".tsv")), delimiter="\t"))
            col = "task" if d["class"] == "MathVista" else "category"
            tot, hit = defaultdict(int), defaultdict(int)
            mod = int(os.environ.get("FAKE_MOD", "3"))
            preds = os.path.join(out, "T20260101_Gfake", f"{model_name}_{ds}.tsv")  # VLMEvalKit: a run folder
            os.makedirs(os.path.dirname(preds), exist_ok=True)
            with open(preds, "w", newline="") as f:
                w = csv.writer(f, delimiter="\t")
                w.writerow(["index", "answer", "prediction"])
                w.writerows([r["index"], r["answer"], r["answer"] if int(r["index"]) % mod else "-7"] for r in rows)
            link = os.path.join(out, os.path.basename(preds))  # ...and links in the model folder
            if not os.path.lexists(link):
                os.symlink(preds, link)
            for r in rows:
                ok = int(r["index"]) % mod != 0
                for k in ("Overall", r[col]):
                    tot[k] += 1
                    hit[k] += ok
            name = "Task&Skill" if d["class"] == "MathVista" else "Subject"
            keys = list(tot) if d["class"] == "MathVista" else sorted(tot)
            _dump(os.path.join(out, f"{model_name}_{ds}_{judge}_score.csv"),
                  [name, "tot", "prefetch", "hit", "prefetch_rate", "acc"],
                  [[k, tot[k], 0, hit[k], 0.0, hit[k] / tot[k] * 100] for k in keys])
'''


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path: Path, kind: str, n: int) -> list[dict[str, str]]:
    rows = []
    cats = ["algebra", "geometry", "counting"]
    for i in range(1, n + 1):
        row = {
            "index": str(i),
            "image": _png_b64() if i == 1 else "1",
            "question": f"What is {i}+1?",
            "answer": str(i + 1),
        }
        row["task" if kind == "mathvista" else "category"] = cats[i % 3 if i % 2 else (i // 2) % 3]
        rows.append(row)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return rows


@pytest.fixture()
def fake_vlmeval(tmp_path: Path) -> Path:
    return make_fake_vlmeval(tmp_path)


def base_python() -> str:
    """The interpreter mergesearch's venv was made from (its prefix is not the venv's)."""
    for candidate in (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}",
        Path(sys.base_prefix) / "bin" / "python3",
    ):
        if candidate.is_file():
            return str(candidate)
    return os.path.realpath(sys.executable)


def make_fake_vlmeval(tmp_path: Path) -> Path:
    """A python executable (the base interpreter, outside mergesearch's venv) that imports the stand-in."""
    pkg = tmp_path / "fakevlmeval" / "vlmeval"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "run.py").write_text(textwrap.dedent(FAKE_RUN))
    base = base_python()
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{pkg.parent}" exec "{base}" "$@"\n')
    python.chmod(0o755)
    return python


def _expected(rows: list[dict[str, str]], col: str) -> tuple[float, dict[str, float]]:
    ok = {r["index"]: int(r["index"]) % 3 != 0 for r in rows}
    cats: dict[str, list[bool]] = {}
    for r in rows:
        cats.setdefault(r[col], []).append(ok[r["index"]])
    return sum(ok.values()) / len(rows), {c: sum(v) / len(v) for c, v in cats.items()}


def test_run_through_launcher_parses_scores_and_never_leaks_the_key(
    tmp_path: Path, fake_vlmeval: Path, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    data = tmp_path / "LMUData"
    data.mkdir()
    vista = write_tsv(data / "MathVista_TEST.tsv", "mathvista", 10)
    vision = write_tsv(data / "MathVision_TEST.tsv", "mathvision", 7)
    model_dir = save_config(Qwen2VLConfig(), tmp_path / "promoted" / "0123abcd4567")
    logs: list[str] = []
    backend = get_backend(
        "vlmeval",
        python=fake_vlmeval,
        data_root=data,
        env={"MERGESEARCH_VLMEVAL_CPU": "0"},
        log=logs.append,
        create_env=False,
    )
    work = tmp_path / "work"
    result = backend.evaluate(model_dir, ["MathVista_TEST", "MathVision_TEST"], work)

    for name, rows, col in (("MathVista_TEST", vista, "task"), ("MathVision_TEST", vision, "category")):
        overall, per = _expected(rows, col)
        assert result.per_dataset[name].overall == pytest.approx(overall)
        assert result.per_dataset[name].per_category == pytest.approx(per)
        assert result.per_dataset[name].n == len(rows)
    assert result.backend == "vlmeval" and result.work_dir == str(work.resolve())
    assert result.label == "VLMEvalKit (judge: VLMEvalKit default)"
    config = json.loads((work / "vlmeval_config.json").read_text())
    assert config["model"]["0123abcd4567"]["model_path"] == str(model_dir.resolve())

    everything = "".join(p.read_text(errors="replace") for p in work.rglob("*") if p.is_file())
    everything += json.dumps(result.to_dict()) + "".join(logs)
    assert SECRET not in everything
    assert "'key': '***'" in (work / "vlmeval.log").read_text()  # the echo happened and was redacted
    assert "***" in (work / "outputs" / "0123abcd4567" / "logs" / "run.log").read_text()


def test_failed_run_raises_without_the_key(tmp_path: Path, fake_vlmeval: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    data = tmp_path / "LMUData"
    data.mkdir()
    write_tsv(data / "MathVista_TEST.tsv", "mathvista", 4)
    model_dir = save_config(Qwen2VLConfig(), tmp_path / "m1")
    backend = get_backend(
        "vlmeval",
        python=fake_vlmeval,
        data_root=data,
        env={"MERGESEARCH_VLMEVAL_CPU": "0", "FAKE_FAIL": "1"},
        log=lambda s: None,
    )
    with pytest.raises(VLMEvalRunError) as err:
        backend.evaluate(model_dir, ["MathVista_TEST"], tmp_path / "w")
    assert "exited with 1" in str(err.value) and "AuthenticationError" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in (tmp_path / "w" / "vlmeval.log").read_text()


def test_skipped_dataset_reports_vlmevalkit_error(tmp_path: Path, fake_vlmeval: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    data = tmp_path / "LMUData"
    data.mkdir()
    write_tsv(data / "MathVista_TEST.tsv", "mathvista", 4)
    model_dir = save_config(Qwen2VLConfig(), tmp_path / "m2")
    env = {"MERGESEARCH_VLMEVAL_CPU": "0", "FAKE_SKIP": "1"}
    backend = get_backend("vlmeval", python=fake_vlmeval, data_root=data, env=env, log=lambda s: None)
    with pytest.raises(VLMEvalRunError, match="requires a working OPENAI API") as err:
        backend.evaluate(model_dir, ["MathVista_TEST"], tmp_path / "w")
    assert "m2_MathVista_TEST_*_score.csv" in str(err.value) and SECRET not in str(err.value)
    assert SECRET not in (tmp_path / "w" / "outputs" / "m2" / "status.json").read_text()


def test_judge_datasets_need_a_judge_before_running(tmp_path: Path, fake_vlmeval: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    data = tmp_path / "LMUData"
    data.mkdir()
    write_tsv(data / "MathVista_TEST.tsv", "mathvista", 4)
    model_dir = save_config(Qwen2VLConfig(), tmp_path / "m3")
    backend = get_backend("vlmeval", python=fake_vlmeval, data_root=data, log=lambda s: None)
    with pytest.raises(JudgeSettingsError, match=r"MathVista_TEST: .*OPENAI_API_KEY.*--backend builtin"):
        backend.evaluate(model_dir, ["MathVista_TEST"], tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing ran
    local = get_backend(
        "vlmeval",
        python=fake_vlmeval,
        data_root=data,
        log=lambda s: None,
        env={"MERGESEARCH_VLMEVAL_CPU": "0"},
        judge=JudgeSettings(api_base="http://127.0.0.1:8000/v1"),
    )
    local.check(["MathVista_TEST"])  # a local judge server needs no key
    assert local.evaluate(model_dir, ["MathVista_TEST"], tmp_path / "w").per_dataset["MathVista_TEST"].n == 4


def test_vlmeval_python_checks(tmp_path: Path, fake_vlmeval: Path) -> None:
    assert check_python(fake_vlmeval) == fake_vlmeval
    with pytest.raises(VLMEvalEnvError, match="own environment"):
        check_python(sys.executable)  # mergesearch's venv: VLMEvalKit must not go there
    with pytest.raises(VLMEvalEnvError, match="not an executable"):
        check_python(tmp_path / "nope")
    with pytest.raises(VLMEvalEnvError, match="cannot import vlmeval"):
        check_python(base_python())


def test_unknown_backend() -> None:
    with pytest.raises(FullEvalError, match="builtin"):
        get_backend("lm-eval")


def test_launcher_rebinds_transformers4_processor_call_order(tmp_path: Path) -> None:
    """VLMEvalKit's LLaVA_Next calls processor(prompt, images); with the launcher's patch that equals the
    keyword call. Run in a child process: the patch changes transformers globally."""
    import subprocess

    from tests.tiny.vlm_processing import build_tiny_vlm

    model = build_tiny_vlm(tmp_path / "llava", family="llava_next")
    code = textwrap.dedent(f"""
        from PIL import Image
        from transformers import AutoProcessor
        from objectives.full_eval.vlmeval.launcher import patch_processor_argument_order
        proc = AutoProcessor.from_pretrained({str(model)!r})
        image = Image.new("RGB", (32, 32), (9, 99, 199))
        text = proc.apply_chat_template([{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "2+2?"}}]}}], add_generation_prompt=True)
        want = proc(images=image, text=text, return_tensors="pt")
        try:
            proc(text, image, return_tensors="pt")
            raise SystemExit("unpatched positional call unexpectedly worked")
        except Exception as err:
            assert "image" in str(err).lower(), err
        print(patch_processor_argument_order())
        got = proc(text, image, return_tensors="pt")
        assert (got["input_ids"] == want["input_ids"]).all() and (got["pixel_values"] == want["pixel_values"]).all()
        print("same")
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("same")
