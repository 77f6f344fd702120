"""The built distribution carries what the commands need outside a source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_study_files_and_the_demo_finds_them(tmp_path):
    """Build the wheel (as pip would), install it into a bare folder, and import from there only: the
    demo's study (studies/toy.toml) must resolve inside the install and load as a valid study."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(wheels)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("mergesearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for study in ("toy.toml", "qwen25vl7b_qwen25math7b.toml", "llava_next_llama3_8b_dartmath.toml"):
        assert f"studies/{study}" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import search.cli.demo as d, search.study.spec as s; "
        "spec = s.load_spec(d.TOY_STUDY); print(d.TOY_STUDY); print(spec.name, spec.pruner.name)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the editable install of this checkout
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    path, summary = out.stdout.strip().splitlines()
    assert Path(path).is_relative_to(target) and Path(path).is_file()
    assert summary == "toy successive_halving"
