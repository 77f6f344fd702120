"""Streaming merge sources from the safetensors files to the device, overlapping the copy with the merge.

The host tier of :class:`~merge_core.resident.ResidentMerger` keeps no source tensor: each ``apply`` reads
the ones its plan needs.  :func:`read_tensor` reads a stored tensor with positional reads (``os.preadv``)
through the page cache — shared by every worker on the host, and unlike an ``mmap`` never counted in a
worker's resident set — into a fresh buffer (pinned where the device copies from host memory).

:class:`Stager` puts host tensors on the device.  With ``copy`` (every device but the CPU) it allocates the
device tensor on the compute stream, issues the copy on a side stream after that stream has caught up with
the compute stream (so a block the allocator hands out again is no longer read), and records an event the
compute stream waits on before the merge; the calls go through ``torch.get_device_module`` (``torch.cuda``
or ``torch.cpu``, whose streams and events are no-ops), so the CPU suite runs every line of it.  Without
``copy`` (the CPU) the host buffer *is* the device tensor, cast when the model dtype differs.

:func:`stream_jobs` runs the pipeline: a reader thread reads job i+2 while job i+1's copy is in flight and
job i is merged — at most :data:`merge_core.memory_plan.STAGED_ENTRIES` jobs' tensors exist at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from merge_core.io import ModelFiles, pread_tensor


class SourceReader:
    """Positional reads of one checkpoint's tensors (its own file descriptors, opened on first use)."""

    def __init__(self, files: ModelFiles) -> None:
        self.files = files
        self._fds: dict[Any, int] = {}

    def read(self, name: str, *, pin: bool = False, pool: BufferPool | None = None) -> torch.Tensor:
        """Tensor ``name`` in a CPU buffer (pinned if ``pin``; from ``pool`` if given), its stored dtype
        and shape."""
        spec = self.files.specs[name]
        file = self.files.where[name]
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        buf = pool.take(spec.nbytes) if pool is not None else None
        if buf is None:
            buf = torch.empty(spec.nbytes, dtype=torch.uint8, pin_memory=pin)
        return pread_tensor(fd, file, name, spec, buf)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class BufferPool:
    """Host buffers by size, reused from one apply to the next, holding at most ``limit`` bytes.

    A fresh tensor-sized buffer faults its pages in again: reading a trial's sources into fresh buffers
    took 1.5-1.8x the same reads into reused ones here.  Taken on the reader thread, given back on the
    compute thread once a job is merged (a lock between them)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._free: dict[int, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor | None:
        """A free uint8 buffer of exactly ``nbytes``, or None."""
        with self._lock:
            free = self._free.get(nbytes)
            if not free:
                return None
            self.held -= nbytes
            return free.pop()

    def give(self, t: torch.Tensor) -> None:
        """Return a tensor read into a pool buffer (dropped when the pool is full)."""
        buf = t.reshape(-1).view(torch.uint8)
        with self._lock:
            if self.held + buf.numel() <= self.limit:
                self._free.setdefault(buf.numel(), []).append(buf)
                self.held += buf.numel()


class Stager:
    """Host tensors → device tensors of a given dtype (see the module docstring).

    ``copy`` / ``pin`` default to "the device is not the CPU"; tests set ``copy=True`` on the CPU to run
    the side-stream path.  Without ``copy`` the host buffers are the tensors merged: they go back to a
    :class:`BufferPool` of ``pool_bytes`` once merged.  With it, a buffer is free as soon as its copy is
    done, which torch's pinned-memory caching allocator tracks itself (a pool here would not wait)."""

    def __init__(
        self,
        device: torch.device,
        *,
        copy: bool | None = None,
        pin: bool | None = None,
        pool_bytes: int = 0,
    ) -> None:
        self.device = device
        self.copy = device.type != "cpu" if copy is None else copy
        self.pin = self.copy and device.type != "cpu" if pin is None else pin
        self.mod = torch.get_device_module(device.type)
        self.mod.set_device(device)  # a CUDA stream belongs to the current device
        self.main = self.mod.current_stream(device)
        self.side = self.mod.Stream() if self.copy else self.main
        self.pool = None if self.copy else BufferPool(pool_bytes)

    def stage(
        self, hosts: Sequence[torch.Tensor | None], dtype: torch.dtype
    ) -> tuple[list[torch.Tensor | None], Any]:
        """The tensors on the device in ``dtype`` (floating ones) and the event the compute stream waits on."""
        if not self.copy:
            return [None if h is None else _cast(h, dtype) for h in hosts], None
        out: list[torch.Tensor | None] = []
        for h in hosts:
            out.append(
                None if h is None else torch.empty(h.shape, dtype=_target(h, dtype), device=self.device)
            )
        with self.mod.stream(self.side):
            self.side.wait_stream(self.main)
            for h, d in zip(hosts, out, strict=True):
                if h is not None and d is not None:
                    d.copy_(h, non_blocking=True)
        event = self.mod.Event()
        event.record(self.side)
        return out, event

    def release(self, hosts: Sequence[torch.Tensor | None]) -> None:
        """A job's host tensors are no longer used: their buffers go back to the pool (if any)."""
        if self.pool is not None:
            for h in hosts:
                if h is not None:
                    self.pool.give(h)

    def wait(self, event: Any) -> None:
        """Make the compute stream wait for a staged copy (nothing without ``copy``)."""
        if event is not None:
            self.main.wait_event(event)


def _target(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if t.dtype.is_floating_point else t.dtype


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(_target(t, dtype))  # the same tensor when the dtype agrees


@dataclass(frozen=True)
class Job:
    """One tensor's work: which stored tensors to read (None = not needed) and a caller's key."""

    key: Any
    reads: tuple[tuple[SourceReader, str] | None, ...]


def stream_jobs(
    jobs: Sequence[Job], stager: Stager, dtype: torch.dtype
) -> Iterator[tuple[Job, list[torch.Tensor | None]]]:
    """Yield each job with its tensors on the device, ready to use on the compute stream, in order.

    Reads run on one reader thread, two jobs ahead of the merge; the copy of job i+1 is issued before job i
    is yielded, so it overlaps job i's merge on the device."""
    if not jobs:
        return

    def read(job: Job) -> list[torch.Tensor | None]:
        return [None if r is None else r[0].read(r[1], pin=stager.pin, pool=stager.pool) for r in job.reads]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergesearch-reader") as pool:
        futures: dict[int, Future[list[torch.Tensor | None]]] = {0: pool.submit(read, jobs[0])}
        if len(jobs) > 1:
            futures[1] = pool.submit(read, jobs[1])
        hosts = futures.pop(0).result()
        staged = (*stager.stage(hosts, dtype), hosts)
        for i, job in enumerate(jobs):
            nxt = None
            if i + 1 < len(jobs):
                nxt_hosts = futures.pop(i + 1).result()
                nxt = (*stager.stage(nxt_hosts, dtype), nxt_hosts)
                if i + 2 < len(jobs):
                    futures[i + 2] = pool.submit(read, jobs[i + 2])
            tensors, event, hosts = staged
            stager.wait(event)
            yield job, tensors
            del tensors
            stager.release(hosts)
            if nxt is not None:
                staged = nxt
