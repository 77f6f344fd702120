"""The result of one full evaluation: what promotion stores as the trial user attribute ``full_eval``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Printed next to every built-in score: our rules are not VLMEvalKit's judge pipeline.
BUILTIN_LABEL = "rule-based, not comparable with published numbers"
VLMEVAL_LABEL = "VLMEvalKit"


@dataclass(frozen=True)
class DatasetResult:
    """One benchmark's full score.

    ``overall`` and the ``per_category`` values are accuracies in [0, 1] (VLMEvalKit's percentages / 100,
    so they compare directly with the proxy ``scores``); ``n`` is the number of items scored.
    """

    overall: float
    per_category: dict[str, float] = field(default_factory=dict)
    n: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"overall": self.overall, "per_category": dict(self.per_category)}
        if self.n is not None:
            out["n"] = self.n
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetResult:
        return cls(
            overall=float(d["overall"]),
            per_category={str(k): float(v) for k, v in d.get("per_category", {}).items()},
            n=None if d.get("n") is None else int(d["n"]),
        )


@dataclass(frozen=True)
class FullEvalResult:
    """Scores of one checkpoint on the full benchmarks.

    JSON form (the ``full_eval`` trial attribute):
    ``{"backend", "label", "per_dataset": {name: {"overall", "per_category", "n"}}, "work_dir"}``, plus
    ``"generation"`` (the decoding settings, ``GenerationConfig.to_dict()``) when the backend decoded itself.
    """

    backend: str
    label: str
    per_dataset: dict[str, DatasetResult]
    work_dir: str = ""
    generation: dict[str, Any] | None = None

    @property
    def mean_overall(self) -> float:
        """Unweighted mean of the per-dataset overall accuracies (what a one-number summary shows)."""
        if not self.per_dataset:
            return float("nan")
        return sum(r.overall for r in self.per_dataset.values()) / len(self.per_dataset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "label": self.label,
            "per_dataset": {name: r.to_dict() for name, r in self.per_dataset.items()},
            "work_dir": self.work_dir,
            **({"generation": self.generation} if self.generation is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FullEvalResult:
        return cls(
            backend=str(d["backend"]),
            label=str(d["label"]),
            per_dataset={str(k): DatasetResult.from_dict(v) for k, v in d["per_dataset"].items()},
            work_dir=str(d.get("work_dir", "")),
            generation=d.get("generation"),
        )
