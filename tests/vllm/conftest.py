"""tests/vllm runs in .venv-vllm (`make test-vllm`); the main suite never collects it (pyproject addopts).

vLLM is imported here, at collection: without it the run fails (an ImportError), it never skips.
"""

from __future__ import annotations

import os

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import vllm  # noqa: E402,F401  (fail, do not skip, where vLLM cannot be imported)
