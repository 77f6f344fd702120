"""Database URLs as they may be shown: every message, log line and stored key hides the password."""

from __future__ import annotations


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for every message and log line)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable URL: hide everything between '://' and '@'
        head, sep, rest = url.partition("://")
        if "@" in rest:
            return f"{head}{sep}***@{rest.rsplit('@', 1)[1]}"
        return url
