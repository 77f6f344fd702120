"""Errors of the full-evaluation backends (all user-fixable, all one line)."""

from __future__ import annotations

from merge_core.errors import MergesearchError


class FullEvalError(MergesearchError):
    """A full evaluation cannot start or did not produce scores."""


class DatasetFileError(FullEvalError):
    """A benchmark TSV is missing under $LMUData or its MD5 does not match VLMEvalKit's."""


class VLMEvalEnvError(FullEvalError):
    """The separate VLMEvalKit environment is missing, broken, or could not be created."""


class VLMEvalRunError(FullEvalError):
    """VLMEvalKit exited with an error or wrote no score file for a dataset."""


class ScoreFileError(FullEvalError):
    """A VLMEvalKit score file does not have the expected columns or rows."""


class ModelFamilyError(FullEvalError):
    """The merged checkpoint's architecture has no VLMEvalKit model class in our table."""


class JudgeSettingsError(FullEvalError):
    """A judge-scored dataset was asked for without any way to reach a judge."""
