"""The VLMEvalKit backend, one module per step.

``backend`` (``VLMEvalBackend``: one subprocess per evaluation, then the score files), ``config`` (VLMEvalKit's
``--config`` and the data checks), ``env`` (VLMEvalKit's own interpreter: found, checked or installed),
``launcher`` (run by that interpreter, never imported by mergesearch's own code), ``scores`` (score files to
numbers), ``selftest`` (``python -m objectives.full_eval.vlmeval.selftest``: the real toolkit on the toy world).
"""

from .backend import LAUNCHER, VLMEvalBackend

__all__ = ["LAUNCHER", "VLMEvalBackend"]
