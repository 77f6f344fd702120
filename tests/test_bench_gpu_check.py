"""benchmarks/gpu_check.py in its CPU mode: the script a GPU machine runs is not broken, and its checks hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_cpu_mode(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--device", "cpu", "--layers", "1", "--tiny", "--batch-size", "4", "--max-new-tokens", "4"]
    rc = module.main([*argv, "--rounds", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("same weights as the device tier") == len(module.RECIPES)
    assert "memory plan on cpu" in out and "GB left for generation" in out
    assert "decode, no splitting: 4 items" in out and "tokens/s" in out
    assert "DARE mask cost" in out and '{"ok": true}' in out
