"""layer_swap (the paper's "layerswap"): layers before ``schedule.start`` stay the VLM's, the later layers
and the final norm are merged linearly.  The step schedule makes the per-tensor weight 0 (a copy) or w,
so per tensor this is exactly :mod:`merge_core.methods.linear`.
"""

from __future__ import annotations

from merge_core.methods import compat_vlm_merging
from merge_core.methods.linear import merge
from merge_core.methods.registry import MethodDef, weight

__all__ = ["METHODS", "merge"]

# mergekit has no layer swap of its own; the export writes it as a linear merge with a step weight list
METHODS = (
    MethodDef(
        "layer_swap", "linear", (weight(),),
        {"mergekit": merge, "vlm_merging": compat_vlm_merging.merge_linear},
        mergekit="linear", schedule="step", order=50,
    ),
)  # fmt: skip
