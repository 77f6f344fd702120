"""Streaming merge sources from the safetensors files to the device, overlapping the copy with the merge.

The host tier of :class:`~merge_core.resident.ResidentMerger` keeps no source tensor: each ``apply`` takes
the ones its plan needs from the files, through the page cache — shared by every worker on the host — in
one of two ways:

- the CPU (:class:`Stager` without ``copy``): :meth:`SourceReader.view` maps each shard once
  (``mmap``, copy-on-write so that nothing can write the file) and hands out tensors that *are* the
  page-cache pages, which the merge reads in place.  A read into a buffer first (``preadv``) moves every
  byte once more: the whole apply measured 2.3-2.5x a pread of its bytes that way, 1.1x with the mapping
  (benchmarks/resident_apply.py).  The mapped pages count in a worker's RSS but not as its own memory:
  they are clean file pages, shared by every worker that maps them (PSS splits them) and reclaimable.
- every other device (``copy``): :meth:`SourceReader.read` reads a tensor with positional reads into a
  pinned buffer, which is copied to the device on a side stream.

:class:`Stager` puts host tensors on the device.  With ``copy`` it allocates the device tensor on the
compute stream, issues the copy on a side stream after that stream has caught up with the compute stream
(so a block the allocator hands out again is no longer read), and records an event the compute stream
waits on before the merge; the calls go through ``torch.get_device_module`` (``torch.cuda`` or
``torch.cpu``, whose streams and events are no-ops), so the CPU suite runs every line of it (tests set
``copy=True`` on the CPU).  Without ``copy`` the mapped tensor *is* the device tensor, cast when the model
dtype differs.

:func:`stream_jobs` runs the pipeline: with ``copy``, a reader thread reads job i+2 while job i+1's copy is
in flight and job i is merged — at most :data:`merge_core.memory_plan.STAGED_ENTRIES` jobs' tensors exist
at once; without it, each job's views are made when it is merged (there is nothing to overlap).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merge_core.errors import ModelFilesError
from merge_core.io import ST_DTYPES, ModelFiles, pread_tensor


class SourceReader:
    """One checkpoint's tensors: positional reads (:meth:`read`) or views of the mapped shards
    (:meth:`view`), each file opened or mapped on first use."""

    def __init__(self, files: ModelFiles) -> None:
        self.files = files
        self._fds: dict[Any, int] = {}
        self._maps: dict[Path, mmap.mmap] = {}

    def read(self, name: str, *, pin: bool = False) -> torch.Tensor:
        """Tensor ``name`` in a fresh CPU buffer (pinned if ``pin``), its stored dtype and shape."""
        spec = self.files.specs[name]
        file = self.files.where[name]
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        buf = torch.empty(spec.nbytes, dtype=torch.uint8, pin_memory=pin)
        return pread_tensor(fd, file, name, spec, buf)

    def view(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as a view of its mapped shard (the page-cache pages), its stored dtype and shape.

        The same bits as :meth:`read`.  Writing it would copy the written pages (a private mapping), never
        the file.  A tensor whose offset is not a multiple of its element size (no writer of safetensors
        files makes one) is read instead.  ModelFilesError when the file ends inside the tensor."""
        spec = self.files.specs[name]
        dtype = ST_DTYPES[spec.dtype]
        if spec.nbytes == 0 or spec.offset % dtype.itemsize:
            return self.read(name)
        file = self.files.where[name]
        mm = self._maps.get(file)
        if mm is None:
            with open(file, "rb") as f:
                mm = self._maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if spec.offset + spec.nbytes > len(mm):
            raise ModelFilesError(
                f"safetensors file {str(file)!r} ended inside tensor {name!r}; re-download it"
            )
        flat = torch.frombuffer(mm, dtype=torch.uint8, count=spec.nbytes, offset=spec.offset)
        return flat.view(dtype).reshape(spec.shape)

    def close(self) -> None:
        """Close the descriptors and drop the mappings (a mapping lives on while a view of it does)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._maps.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class Stager:
    """Host tensors → device tensors of a given dtype (see the module docstring).

    ``copy`` / ``pin`` default to "the device is not the CPU"; tests set ``copy=True`` on the CPU to run
    the side-stream path.  With ``copy`` a pinned buffer is free as soon as its copy is done, which torch's
    pinned-memory caching allocator tracks itself."""

    def __init__(
        self,
        device: torch.device,
        *,
        copy: bool | None = None,
        pin: bool | None = None,
    ) -> None:
        self.device = device
        self.copy = device.type != "cpu" if copy is None else copy
        self.pin = self.copy and device.type != "cpu" if pin is None else pin
        self.mod = torch.get_device_module(device.type)
        self.mod.set_device(device)  # a CUDA stream belongs to the current device
        self.main = self.mod.current_stream(device)
        self.side = self.mod.Stream() if self.copy else self.main

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

    With ``copy``, reads run on one reader thread, two jobs ahead of the merge; the copy of job i+1 is
    issued before job i is yielded, so it overlaps job i's merge on the device.  Without it the jobs'
    tensors are views of the mapped files (:meth:`SourceReader.view`), made one job at a time."""
    if not jobs:
        return
    if not stager.copy:
        for job in jobs:
            views = [None if r is None else r[0].view(r[1]) for r in job.reads]
            yield job, stager.stage(views, dtype)[0]
        return

    def read(job: Job) -> list[torch.Tensor | None]:
        return [None if r is None else r[0].read(r[1], pin=stager.pin) for r in job.reads]

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
            del tensors, hosts
            if nxt is not None:
                staged = nxt
