"""Secrets from the environment: `NAME`, or the file named by `NAME_FILE` (the Docker/compose
convention for secrets mounted under /run/secrets)."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import UserError


def env_secret(name: str) -> str | None:
    """The secret `name` from the environment or its `_FILE`; None when unset or empty."""
    value = os.environ.get(name)
    if value:
        return value.strip() or None
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{name}_FILE={path}: cannot read it ({exc.strerror or exc})") from None
    return text.strip() or None
