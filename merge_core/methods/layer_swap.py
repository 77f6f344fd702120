"""layer_swap (the paper's "layerswap"): layers before ``schedule.start`` stay the VLM's, the later layers
and the final norm are merged linearly.  The step schedule makes the per-tensor weight 0 (a copy) or w,
so per tensor this is exactly :mod:`merge_core.methods.linear`.
"""

from __future__ import annotations

from merge_core.methods.linear import merge

__all__ = ["merge"]
