"""The built-in backend: our own rule-based scorer (objectives.scorer) on the full benchmark files.

It needs no judge and no second environment, so it is the toy world's backend and the judge-free fallback
on real data; every result carries the label "rule-based, not comparable with published numbers".
Resumable: each finished chunk's item records are appended to ``<work_dir>/records.jsonl`` with the
fingerprint of the generation settings they were decoded with, and a rerun scores only the chunks not in
it under the same settings (a chunk decoded with other settings is scored again, never reused).

Decoding: the study's ``[objectives.generation]`` (``generation``) is resolved against the checkpoint with
:func:`objectives.generation_defaults.study_generation`, the call the proxy's worker makes, so every field
(max_new_tokens, stop strings, eos ids, repetition penalty, pixel bounds, system prompt, instructions,
dataset prompts) reaches the promoted model's generator as it reached the proxy's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_core.atomic import write_text_atomic

from .errors import FullEvalError
from .result import BUILTIN_LABEL, DatasetResult, FullEvalResult

if TYPE_CHECKING:
    from objectives.generation import GenerationConfig


def _chunk_key(chunk: Any) -> str:
    indices = getattr(chunk, "indices", ())
    return f"{chunk.dataset}:{','.join(str(i) for i in indices)}"


@dataclass
class BuiltinBackend:
    """Full evaluation with the proxy scorer's rules on every item of each dataset.

    ``data_root``: folder of the TSVs ($LMUData by default); ``chunk_size`` / ``batch_size`` /
    ``max_new_tokens``: scorer and generation settings (None: the scorer's defaults, 8 rows and 512 tokens);
    ``generation``: the study's ``[objectives.generation]`` table (``search.study.spec_generation``; None: the
    preset "none" with ``max_new_tokens``); ``device``, ``dtype``: where and how the checkpoint is loaded.
    """

    data_root: str | Path | None = None
    chunk_size: int = 50
    batch_size: int | None = None
    max_new_tokens: int | None = None
    generation: Mapping[str, Any] | None = None
    device: str = "cpu"
    dtype: str = "auto"
    log: Callable[[str], None] = print
    name: str = "builtin"
    label: str = BUILTIN_LABEL

    def check(self, datasets: Sequence[str], *, vlm_dir: str | Path | None = None) -> None:
        """Load every dataset (missing file, wrong columns -> DatasetError naming it) before any merge."""
        from objectives.datasets import load_dataset

        if not datasets:
            raise FullEvalError(
                "no datasets to evaluate; set [promotion] datasets in the study file or pass --datasets"
            )
        for name in datasets:
            load_dataset(name, root=self.data_root)

    def evaluate(
        self, model_dir: str | Path, datasets: Sequence[str], work_dir: str | Path
    ) -> FullEvalResult:
        """Score ``model_dir`` on every item of ``datasets``: overall = correct / n per dataset (the
        scorer's ``ScoreResult``), per_category = the same ratio within each category."""
        from objectives.datasets import load_dataset

        model_dir = Path(model_dir).resolve()
        work_dir = Path(work_dir).resolve()
        if not (model_dir / "config.json").is_file():
            raise FullEvalError(f"{model_dir}: no config.json; promote merges the checkpoint there first")
        if not datasets:
            raise FullEvalError(
                "no datasets to evaluate; set [promotion] datasets in the study file or pass --datasets"
            )
        # Load (and so validate) every dataset before the model: a missing TSV fails in a second, not after loading 7B.
        loaded = [load_dataset(name, root=self.data_root) for name in datasets]
        model, processor = self._load(model_dir)
        config = self.generation_config(model.config.model_type, processor)
        scorer = self._scorer(model, processor, loaded, config)
        settings = settings_key(config)

        work_dir.mkdir(parents=True, exist_ok=True)
        records_path = work_dir / "records.jsonl"
        done: dict[str, list[dict[str, Any]]] = {}
        stale = 0
        if records_path.is_file():
            for line in records_path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("settings") != settings:  # decoded otherwise: its responses are not ours
                        stale += 1
                        continue
                    done[row["chunk"]] = row["records"]
        if stale:
            self.log(
                f"builtin: {records_path}: {stale} chunk(s) were decoded with other generation settings; "
                "scoring them again"
            )
        from objectives.scorer import ItemRecord, ScoreResult

        records: list[Any] = []
        chunks = scorer.chunks()
        with records_path.open("a", encoding="utf-8") as out:
            for i, chunk in enumerate(chunks):
                key = _chunk_key(chunk)
                if key in done:
                    records.extend(ItemRecord(**r) for r in done[key])
                    continue
                new = scorer.run_chunk(chunk)
                row = {"chunk": key, "settings": settings, "records": [asdict(r) for r in new]}
                out.write(json.dumps(row) + "\n")
                out.flush()
                os.fsync(out.fileno())
                records.extend(new)
                self.log(f"builtin: chunk {i + 1}/{len(chunks)} ({chunk.dataset})")
        score = ScoreResult.from_records(records, loaded)
        per_dataset = {
            name: DatasetResult(
                overall=float(s.accuracy),
                per_category={k: float(v) for k, v in _categories(s).items()},
                n=int(s.n),
            )
            for name, s in score.per_dataset.items()
        }
        result = FullEvalResult(
            backend=self.name,
            label=self.label,
            per_dataset=per_dataset,
            work_dir=str(work_dir),
            generation=config.to_dict(),
        )
        write_text_atomic(work_dir / "result.json", json.dumps(result.to_dict(), indent=2) + "\n")
        return result

    def _load(self, model_dir: Path) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText

        from objectives.processing import load_processor

        processor = load_processor(model_dir)
        device = self.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=self.dtype).to(device)
        model.eval()
        return model, processor

    def generation_config(self, model_type: str, processor: Any) -> GenerationConfig:
        """The settings this checkpoint is decoded with: the study's, resolved as the proxy's worker does."""
        from objectives.generation import GenerationConfig
        from objectives.generation_defaults import study_generation

        defaults = GenerationConfig()
        return study_generation(
            model_type,
            self.generation,
            processor=processor,
            batch_size=self.batch_size if self.batch_size is not None else defaults.batch_size,
            max_new_tokens=self.max_new_tokens if self.max_new_tokens is not None else defaults.max_new_tokens,
        )

    def _scorer(
        self, model: Any, processor: Any, datasets: list[Any], config: GenerationConfig | None = None
    ) -> Any:
        from objectives.scorer import ProxyScorer

        config = config or self.generation_config(model.config.model_type, processor)
        return ProxyScorer(model, processor, datasets, chunk_size=self.chunk_size, generation=config)


def settings_key(config: GenerationConfig) -> str:
    """sha256 (16 hex digits) of the canonical JSON of ``config`` (batch size left out: greedy outputs do
    not depend on the batch an item is in): equal keys, equal decoding."""
    data = {k: v for k, v in config.to_dict().items() if k != "batch_size"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _categories(dataset_score: Any) -> dict[str, float]:
    """per_category of a scorer DatasetScore as {category: accuracy} (accepts a nested {acc, n} form too)."""
    out: dict[str, float] = {}
    for name, value in (getattr(dataset_score, "per_category", None) or {}).items():
        if isinstance(value, dict):
            value = value.get("accuracy", value.get("acc"))
        elif hasattr(value, "accuracy"):
            value = value.accuracy
        out[str(name)] = float(value)
    return out
