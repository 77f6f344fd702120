"""Layer schedules: the multiplier r(i) of the LLM weight at decoder layer i of L.

constant: r = 1 · linear: r = i/(L-1) · loglinear: r = ln(1+i)/ln(L) · step: r = 0 for i < start, else 1
(the paper's layer swap) · explicit: r = values[i] (exactly L values).  With L = 1, linear and loglinear
give r = 1.  Tensors outside the decoder layers take the r of their position in the network: the
embeddings that of layer 0, the final norm and lm_head that of layer L-1.
"""

from __future__ import annotations

import math

from merge_core.errors import RecipeError
from merge_core.recipe import Schedule


def layer_factors(schedule: Schedule, num_layers: int) -> list[float]:
    """r(i) for i = 0..num_layers-1; RecipeError if an explicit schedule's length is not ``num_layers``."""
    n = num_layers
    if n < 1:
        raise ValueError("a model has at least one layer")
    shape = schedule.shape
    if shape == "constant":
        return [1.0] * n
    if shape == "linear":
        return [1.0] * n if n == 1 else [i / (n - 1) for i in range(n)]
    if shape == "loglinear":
        return [1.0] * n if n == 1 else [math.log1p(i) / math.log(n) for i in range(n)]
    if shape == "step":
        start = schedule.start if schedule.start is not None else 0
        if start > n:
            raise RecipeError(
                f"recipe field 'schedule.start' is {start} but the model has only {n} layers; use 0..{n}"
            )
        return [0.0 if i < start else 1.0 for i in range(n)]
    if shape == "explicit":
        values = schedule.values or ()
        if len(values) != n:
            raise RecipeError(
                f"recipe field 'schedule.values' has {len(values)} values but the model has {n} layers; give exactly {n}"
            )
        return [float(v) for v in values]
    raise RecipeError(f"recipe field 'schedule.shape' is {shape!r}")
