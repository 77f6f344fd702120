"""Which ``[objectives] weights`` keys name a dataset of the study (a listed one or, with ``proxy_size``, its proxy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def unknown_weight_keys(weights: Mapping[str, Any], datasets: Sequence[str], proxy_size: Any) -> list[str]:
    """The keys of ``weights`` that are neither in ``datasets`` nor the proxy name of one of them
    (:func:`objectives.proxy.proxy_name`, only when ``proxy_size`` is a positive int)."""
    from objectives.proxy import proxy_name

    known = set(datasets)
    if isinstance(proxy_size, int) and not isinstance(proxy_size, bool) and proxy_size > 0:
        known |= {proxy_name(d, proxy_size) for d in datasets}
    return [k for k in weights if k not in known]
