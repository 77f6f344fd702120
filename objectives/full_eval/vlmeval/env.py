"""VLMEvalKit's own Python environment: look it up, or create it (never the core environment).

VLMEvalKit (PyPI ``ms-vlmeval``) pulls torchvision, which replaces a CPU torch by a ~7 GB CUDA build, so it
lives in a separate venv: ``$MERGESEARCH_CACHE/vlmeval-venv`` (default ``~/.cache/mergesearch``), or any
interpreter given with ``--vlmeval-python``. Creation is atomic: built in ``<dir>.partial``, verified by
importing ``vlmeval``, stamped, then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from merge_core.atomic import replace_dir

from ..errors import VLMEvalEnvError

# The release whose run.py options and score-file formats this adapter was written against.
VLMEVAL_PIP_SPEC = os.environ.get("MERGESEARCH_VLMEVAL_SPEC", "ms-vlmeval==0.0.20")
STAMP = "mergesearch-vlmeval.json"


def default_env_dir() -> Path:
    """Where the tool keeps its VLMEvalKit venv."""
    cache = os.environ.get("MERGESEARCH_CACHE")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "mergesearch"
    return base / "vlmeval-venv"


def _has_vlmeval(python: Path) -> bool:
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vlmeval') else 3)"
    try:
        return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _prefix_of(python: Path) -> Path | None:
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 else None


def check_python(python: str | Path) -> Path:
    """Validate an explicit VLMEvalKit interpreter: exists, is not the core environment, imports vlmeval."""
    path = Path(python).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise VLMEvalEnvError(
            f"--vlmeval-python {path}: not an executable file; give the python of a venv with ms-vlmeval"
        )
    prefix = _prefix_of(path)
    if prefix is not None and prefix == Path(sys.prefix).resolve():
        raise VLMEvalEnvError(
            f"--vlmeval-python {path}: that is mergesearch's own environment; VLMEvalKit must live in its own venv "
            "(it replaces torch), leave the option out to let mergesearch create one"
        )
    if not _has_vlmeval(path):
        raise VLMEvalEnvError(
            f"--vlmeval-python {path}: cannot import vlmeval; run `{path} -m pip install {VLMEVAL_PIP_SPEC}`"
        )
    return path


def env_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def find_env(env_dir: Path | None = None) -> Path | None:
    """The interpreter of a complete tool-made env (stamp present), else None."""
    env_dir = env_dir or default_env_dir()
    python = env_python(env_dir)
    if (env_dir / STAMP).is_file() and python.exists():
        return python
    return None


def create_env(
    env_dir: Path | None = None,
    *,
    base_python: str | None = None,
    pip_spec: str = VLMEVAL_PIP_SPEC,
    log: Callable[[str], None] = print,
) -> Path:
    """Create the VLMEvalKit venv (minutes, ~7 GB); returns its python. Nothing is left half-made at
    ``env_dir``: a failed install stays in ``<env_dir>.partial`` (removed on the next try)."""
    env_dir = env_dir or default_env_dir()
    partial = env_dir.with_name(env_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    base = base_python or shutil.which("python3") or sys.executable
    log(f"creating the VLMEvalKit environment in {env_dir} ({pip_spec}; about 7 GB, several minutes)")
    steps = [
        [base, "-m", "venv", str(partial)],
        [str(env_python(partial)), "-m", "pip", "install", "-q", pip_spec],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise VLMEvalEnvError(
                f"creating {partial} failed at `{' '.join(cmd[-3:])}` (exit {proc.returncode}): {' | '.join(tail)}; "
                "fix the cause (network, disk) and rerun, or pass --vlmeval-python"
            )
    if not _has_vlmeval(env_python(partial)):
        raise VLMEvalEnvError(
            f"{partial}: {pip_spec} installed but `import vlmeval` fails; pass --vlmeval-python instead"
        )
    version = subprocess.run(
        [str(env_python(partial)), "-c", "import importlib.metadata as m; print(m.version('ms-vlmeval'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    (partial / STAMP).write_text(json.dumps({"pip_spec": pip_spec, "ms_vlmeval": version}) + "\n")
    replace_dir(partial, env_dir)
    log(f"VLMEvalKit {version} ready in {env_dir}")
    return env_python(env_dir)


def resolve_python(
    explicit: str | Path | None, *, create: bool = True, log: Callable[[str], None] = print
) -> Path:
    """The interpreter to run VLMEvalKit with: ``explicit`` (checked), else the tool-made env (created on
    first use when ``create``), else a VLMEvalEnvError saying how to get one."""
    if explicit:
        return check_python(explicit)
    found = find_env()
    if found is not None:
        return found
    if not create:
        raise VLMEvalEnvError(
            f"no VLMEvalKit environment at {default_env_dir()}; run `make test-vlmeval` (creates it) or pass --vlmeval-python"
        )
    return create_env(log=log)
