"""User-facing errors.

Every error a user can fix (bad recipe field, missing file, shape mismatch, bad study file...) is raised as a
:class:`MergesearchError` subclass whose message names the file, tensor or field and says what to do.
The CLI prints it on one line and exits with code 2; nothing is written before it is raised.
"""

from __future__ import annotations


class MergesearchError(Exception):
    """An error the user can fix; ``str(err)`` is a complete one-line explanation."""

    exit_code = 2


class RecipeError(MergesearchError):
    """A recipe field is missing, unknown or out of range."""


class ModelFilesError(MergesearchError):
    """A model path is missing, holds no safetensors, or a shard is corrupt."""


class ArchitectureError(MergesearchError):
    """Models whose tensors cannot be paired (unknown architecture, shape mismatch, missing partners)."""
