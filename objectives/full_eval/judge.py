"""Judge settings for VLMEvalKit, passed only through the child's environment, and key redaction.

The API key is read from the caller's environment (``OPENAI_API_KEY`` by default) at run time and handed to
VLMEvalKit's process environment; it is never a command-line argument, never stored in our config files or
trial attributes, and every text we write or raise goes through :meth:`JudgeSettings.redact` first
(VLMEvalKit itself logs ``judge_kwargs`` and may echo the key).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from merge_core.atomic import write_bytes_atomic

REDACTED = "***"
# Files VLMEvalKit writes as text (logs, status.json, csv tables) that could carry an echoed key.
_TEXT_SUFFIXES = {".log", ".txt", ".json", ".jsonl", ".csv", ".tsv", ".out", ".err"}


@dataclass(frozen=True)
class JudgeSettings:
    """Which judge VLMEvalKit uses.

    ``model``: VLMEvalKit's ``--judge`` (e.g. "gpt-4o-mini", "exact_matching"; None = its per-dataset default).
    ``api_base``: becomes ``OPENAI_API_BASE`` (an OpenAI-compatible server, e.g. a local vLLM judge).
    ``local_llm``: becomes ``LOCAL_LLM`` (the local judge model's name/path).
    ``key_env``: the name of the variable in *our* environment holding the key; its value is forwarded to the
    child as ``OPENAI_API_KEY`` and nowhere else.
    """

    model: str | None = None
    api_base: str | None = None
    local_llm: str | None = None
    key_env: str = "OPENAI_API_KEY"

    def secret(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key value (or None); only for building the child's environment and for redaction."""
        env = os.environ if environ is None else environ
        value = env.get(self.key_env)
        return value or None

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: os.environ) plus OPENAI_API_BASE / LOCAL_LLM / OPENAI_API_KEY for the judge."""
        env = dict(os.environ if base is None else base)
        if self.api_base:
            env["OPENAI_API_BASE"] = self.api_base
        if self.local_llm:
            env["LOCAL_LLM"] = self.local_llm
        key = self.secret(base)
        if key:
            env["OPENAI_API_KEY"] = key
        return env

    def cli_args(self) -> list[str]:
        """VLMEvalKit command-line arguments for the judge (the key is deliberately not one of them)."""
        return ["--judge", self.model] if self.model else []

    def redact(self, text: str, environ: Mapping[str, str] | None = None) -> str:
        """``text`` with every occurrence of the key replaced by ``***``."""
        key = self.secret(environ)
        if key and key in text:
            return text.replace(key, REDACTED)
        return text

    def configured(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether a judge API can be reached at all: a key, or an OpenAI-compatible base URL (ours or the
        environment's OPENAI_API_BASE, e.g. a local server that needs no key)."""
        env = os.environ if environ is None else environ
        return bool(self.secret(environ) or self.api_base or env.get("OPENAI_API_BASE"))

    def public(self) -> dict[str, str | None]:
        """What may be recorded about the judge (no key, only whether one was set)."""
        return {
            "model": self.model,
            "api_base": self.api_base,
            "local_llm": self.local_llm,
            "key": f"${self.key_env} ({'set' if self.secret() else 'unset'})",
        }


def redact_tree(root: str | Path, judge: JudgeSettings, environ: Mapping[str, str] | None = None) -> int:
    """Rewrite the text files under ``root`` that contain the key, key replaced; returns how many changed."""
    key = judge.secret(environ)
    if not key:
        return 0
    needle = key.encode()
    changed = 0
    for path in Path(root).rglob("*"):
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in _TEXT_SUFFIXES:
            continue
        data = path.read_bytes()
        if needle in data:
            write_bytes_atomic(path, data.replace(needle, REDACTED.encode()))
            changed += 1
    return changed
