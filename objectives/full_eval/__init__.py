"""Full evaluation of promoted checkpoints: VLMEvalKit (its own environment) or the built-in scorer.

``get_backend(name, **options).evaluate(model_dir, datasets, work_dir) -> FullEvalResult``.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import FullEvalError
from .result import BUILTIN_LABEL, VLMEVAL_LABEL, DatasetResult, FullEvalResult
from .tables import DEFAULT_DATASETS

BACKENDS = ("vlmeval", "builtin")


class Backend(Protocol):
    name: str
    label: str

    def evaluate(self, model_dir: Any, datasets: Any, work_dir: Any) -> FullEvalResult: ...


def get_backend(name: str, **options: Any) -> Backend:
    """The backend called ``name`` ("vlmeval" | "builtin"), built with ``options`` (its dataclass fields)."""
    if name == "vlmeval":
        from .vlmeval import VLMEvalBackend

        return VLMEvalBackend(**options)
    if name == "builtin":
        from .builtin import BuiltinBackend

        return BuiltinBackend(**options)
    raise FullEvalError(f"full-evaluation backend {name!r}: unknown; use one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "BUILTIN_LABEL",
    "DEFAULT_DATASETS",
    "VLMEVAL_LABEL",
    "Backend",
    "DatasetResult",
    "FullEvalError",
    "FullEvalResult",
    "get_backend",
]
