"""The VLMEvalKit backend: run VLMEvalKit's own pipeline on a merged checkpoint in its own environment.

One call = one subprocess ``<vlmeval python> vlmeval/launcher.py --config <work_dir>/vlmeval_config.json
--work-dir <work_dir>/outputs --reuse [--judge M]``, its output streamed (key redacted) to
``<work_dir>/vlmeval.log``; then every dataset's score file is parsed. ``--reuse`` makes a rerun after an
interruption continue from VLMEvalKit's saved predictions.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merge_core.atomic import write_text_atomic

from ..errors import JudgeSettingsError, VLMEvalRunError
from ..judge import JudgeSettings, redact_tree
from ..result import VLMEVAL_LABEL, DatasetResult, FullEvalResult
from ..tables import JUDGE_CLASSES, KNOWN_DATASETS, DatasetInfo
from .config import build_config, check_data, lmudata_root, resolve_datasets, safe_model_name
from .env import resolve_python
from .records import write_item_records
from .scores import find_score_file, parse_score_file

LAUNCHER = Path(__file__).with_name("launcher.py")


def dataset_error(status_path: Path, dataset: str) -> str:
    """The first line of the error VLMEvalKit recorded for ``dataset`` in its status.json ('' if none);
    it catches per-dataset exceptions and moves on, so this is where e.g. "requires a working OPENAI API" is."""
    try:
        status = json.loads(status_path.read_text())
        message = status["datasets"][dataset].get("error_message") or ""
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
    return str(message).strip().splitlines()[0] if str(message).strip() else ""


@dataclass
class VLMEvalBackend:
    """Full evaluation through VLMEvalKit.

    ``python``: VLMEvalKit's interpreter (None: the tool-made venv, created on first use if ``create_env``).
    ``judge``: judge settings (environment only; see :mod:`objectives.full_eval.judge`).
    ``data_root``: $LMUData override. ``model_kwargs``: overrides of the model class kwargs (e.g. smaller
    ``max_pixels``). ``extra_args``: more ``run.py`` arguments (e.g. ``["--api-nproc", "8"]``).
    ``env``: extra environment variables for the child (e.g. MERGESEARCH_VLMEVAL_CPU=1).
    """

    python: str | Path | None = None
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    data_root: str | Path | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    create_env: bool = True
    log: Callable[[str], None] = print
    name: str = "vlmeval"
    label: str = VLMEVAL_LABEL

    def check(self, datasets: Sequence[str], *, vlm_dir: str | Path | None = None) -> None:
        """Everything checkable before merging: dataset classes, TSVs + MD5s, the VLM's family (from
        ``vlm_dir``'s config.json, which the merge keeps), the VLMEvalKit interpreter (created if missing)."""
        infos = resolve_datasets(list(datasets))
        self._check_judge(infos)
        check_data(infos, lmudata_root(self.data_root))
        if vlm_dir is not None and Path(vlm_dir, "config.json").is_file():
            build_config(vlm_dir, infos, model_name="check", model_kwargs=self.model_kwargs)
        self.python = resolve_python(self.python, create=self.create_env, log=self.log)

    def evaluate(
        self, model_dir: str | Path, datasets: Sequence[str], work_dir: str | Path
    ) -> FullEvalResult:
        """Evaluate ``model_dir`` on ``datasets`` with VLMEvalKit; outputs under ``work_dir``.

        Checks first (model family, dataset classes, TSVs and MD5s under $LMUData, the interpreter), then
        runs; raises VLMEvalRunError naming the log when VLMEvalKit fails or writes no score file.
        """
        model_dir = Path(model_dir).resolve()
        work_dir = Path(work_dir).resolve()
        infos = resolve_datasets(list(datasets))
        self._check_judge(infos)
        model_name = safe_model_name(model_dir.name)
        config = build_config(model_dir, infos, model_name=model_name, model_kwargs=self.model_kwargs)
        root = lmudata_root(self.data_root)
        check_data(infos, root)
        python = resolve_python(self.python, create=self.create_env, log=self.log)

        work_dir.mkdir(parents=True, exist_ok=True)
        config_path = work_dir / "vlmeval_config.json"
        write_text_atomic(config_path, json.dumps(config, indent=2) + "\n")
        out_dir = work_dir / "outputs"
        cmd = [
            str(python),
            str(LAUNCHER),
            "--config",
            str(config_path),
            "--work-dir",
            str(out_dir),
            "--reuse",
            *self.judge.cli_args(),
            *self.extra_args,
        ]
        env = self.judge.child_env()
        env["LMUData"] = str(root)
        env.update(self.env)
        log_path = work_dir / "vlmeval.log"
        self.log(f"VLMEvalKit: {model_name} on {', '.join(d.name for d in infos)} (log: {log_path})")
        started = time.time() - 2.0  # slack for file systems with coarse timestamps
        returncode, tail = self._run(cmd, env, log_path, cwd=work_dir)
        redact_tree(work_dir, self.judge)
        if returncode != 0:
            raise VLMEvalRunError(
                f"VLMEvalKit exited with {returncode} evaluating {model_dir}; see {log_path}. Last lines: {' | '.join(tail)}"
            )
        known = [*KNOWN_DATASETS, *(d.name for d in infos)]
        per_dataset: dict[str, DatasetResult] = {}
        for info in infos:
            try:
                path = find_score_file(out_dir, model_name, info.name, info.cls, known, newer_than=started)
            except VLMEvalRunError as err:
                reason = self.judge.redact(dataset_error(out_dir / model_name / "status.json", info.name))
                hint = f"VLMEvalKit's error for it: {reason}" if reason else f"last lines: {' | '.join(tail)}"
                raise VLMEvalRunError(f"{err}; log: {log_path}; {hint}") from None
            per_dataset[info.name] = parse_score_file(path, info.cls)
        write_item_records(work_dir, model_name, infos, root, log=self.log)  # per-item, for paired tests
        # the judge decides what MathVista / MATH-V numbers mean, so it is part of the label
        label = f"{self.label} (judge: {self.judge.model or 'VLMEvalKit default'})"
        return FullEvalResult(backend=self.name, label=label, per_dataset=per_dataset, work_dir=str(work_dir))

    def _check_judge(self, infos: Sequence[DatasetInfo]) -> None:
        """Judge-scored datasets need a reachable judge; say so before hours of inference, not after."""
        needy = [d.name for d in infos if d.cls in JUDGE_CLASSES]
        if needy and not self.judge.configured():
            raise JudgeSettingsError(
                f"{', '.join(needy)}: VLMEvalKit scores these with an LLM judge and refuses to run without one; "
                f"set ${self.judge.key_env} (and --judge-base-url for a local OpenAI-compatible server), "
                "or use --backend builtin (rule-based)"
            )

    def _run(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> tuple[int, list[str]]:
        """Run ``cmd``, streaming stdout+stderr line by line, redacted, into ``log_path``; (exit code, last lines)."""
        tail: list[str] = []
        with (
            log_path.open("a", encoding="utf-8") as log,
            subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            ) as proc,
        ):
            log.write("$ " + " ".join(cmd) + "\n")
            assert proc.stdout is not None
            for line in proc.stdout:
                line = self.judge.redact(line)
                log.write(line)
                log.flush()
                tail = (tail + [line.rstrip()])[-6:]
            returncode = proc.wait()
        return returncode, tail
