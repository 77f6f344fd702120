"""Which toy world is this: the machine that built it and a fingerprint of its weights.

Float training differs across CPU models (vectorised kernels reduce in another order), so one seed gives
byte-identical worlds on one machine and different ones on another: the VLM alone scored 0.2850 on one
machine and 0.2975 on another, the best task-arithmetic cell 0.8025 and 0.520. The manifest
(``toy_world.json``) records ``machine`` (:func:`machine_info`), ``torch`` and ``fingerprint``
(:func:`weights_fingerprint`), so two users can tell whether they hold the same world, and a cached result
(a benchmark's landscape) whether it was computed on the world at hand.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

MODEL_DIRS = ("base", "llm", "vlm")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    """Platform, architecture, CPU model and torch version of this machine."""
    import torch

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
    }


def weights_fingerprint(root: str | Path) -> str:
    """sha256 (hex) over the world's tensors: for ``base``, ``llm``, ``vlm`` in that order, every tensor of
    their ``*.safetensors`` files in name order, as ``<dir>/<name>``, dtype, shape and raw bytes."""
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    root = Path(root)
    for sub in MODEL_DIRS:
        for path in sorted((root / sub).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                for name in sorted(f.keys()):
                    t = f.get_tensor(name).contiguous()
                    h.update(f"{sub}/{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def world_identity(world) -> dict[str, str]:  # world: objectives.toy.build.ToyWorld
    """``{"fingerprint", "machine", "torch"}`` of a built world: from its manifest, the fingerprint computed
    from the files when the manifest predates it (the machine is then unknown)."""
    info = world.info or {}
    fp = info.get("fingerprint") or weights_fingerprint(world.root)
    machine = info.get("machine") or {}
    return {
        "fingerprint": fp,
        "machine": machine.get("cpu", "unknown (built before the manifest recorded it)"),
        "torch": machine.get("torch", "unknown"),
    }


def identity_line(world) -> str:
    """One line for ``toy build`` and the demo: fingerprint (16 hex), the CPU and torch that built it."""
    ident = world_identity(world)
    return f"weights sha256 {ident['fingerprint'][:16]} · built on {ident['machine']} · torch {ident['torch']}"
