"""Which device a worker computes on, checked before anything is loaded, and how much memory it has free.

``resolve_device("auto")`` is ``cuda`` when torch sees a CUDA device, else ``cpu``.  An accelerator device
must exist (``cuda:3`` on a host with one GPU is an error) and, with ``workers`` > 1, there must be one
device per worker.  The checks go through ``torch.get_device_module(type)`` (``torch.cuda``, ``torch.cpu``),
so a test can stand in for a GPU host by patching ``torch.cuda.is_available`` / ``device_count``.

``free_memory(device)``: bytes a new allocation can still get — ``mem_get_info`` of an accelerator, and on
the CPU the kernel's ``MemAvailable`` (free RAM plus reclaimable page cache).
"""

from __future__ import annotations

import os

import torch

from merge_core.errors import MergesearchError


class DeviceError(MergesearchError):
    """The device asked for does not exist here, or there are fewer devices than workers."""


def resolve_device(device: str | torch.device, *, workers: int = 1, field: str = "device") -> torch.device:
    """The validated ``torch.device`` for ``device`` ("auto", "cpu", "cuda", "cuda:N", ...); an accelerator
    device comes back with its index (``cuda`` → ``cuda:<current device>``).

    Raises DeviceError (naming ``field``) when the string is not a device, the device type has no device
    on this host, the index is out of range, or ``workers`` exceeds the number of such devices."""
    text = str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            f"{field} {str(device)!r} is not a device ({err}); use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cpu":
        return dev
    try:
        mod = torch.get_device_module(dev.type)
    except RuntimeError:
        raise DeviceError(
            f"{field} {text!r}: torch has no {dev.type} backend; use 'auto', 'cpu' or 'cuda'"
        ) from None
    count = int(mod.device_count()) if mod.is_available() else 0
    if count == 0:
        raise DeviceError(
            f"{field} {text!r} but torch sees no {dev.type} device on this host "
            f"(torch.{dev.type}.is_available() is False); use 'auto' or 'cpu'"
        )
    if dev.index is not None and dev.index >= count:
        raise DeviceError(
            f"{field} {text!r} does not exist: this host has {count} {dev.type} device(s), "
            f"{dev.type}:0 to {dev.type}:{count - 1}"
        )
    if workers > count or (dev.index is not None and workers > 1):
        raise DeviceError(
            f"{workers} workers asked on {text!r} but this host has {count} {dev.type} device(s) and a worker "
            f"needs one of its own; set workers <= {count if dev.index is None else 1}"
        )
    # with its index: streams and set_device need one ("cuda" means the current device)
    return dev if dev.index is not None else torch.device(dev.type, int(mod.current_device()))


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux: fall back to free physical pages
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: ``torch.<type>.mem_get_info`` for accelerators, MemAvailable for the CPU."""
    if device.type == "cpu":
        return _meminfo_available()
    mod = torch.get_device_module(device.type)
    free, _total = mod.mem_get_info(device)
    return int(free)


def free_per_worker(device: torch.device, workers: int) -> int:
    """Free bytes one of ``workers`` workers may plan with: CPU workers share the host's RAM; each
    accelerator worker has a device of its own (:func:`resolve_device` checked there are enough)."""
    free = free_memory(device)
    return free // max(1, workers) if device.type == "cpu" else free
