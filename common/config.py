"""Loading one typed config per process: defaults < YAML file < environment < command-line flags.

Each process defines its own pydantic model (`edge.config.EdgeConfig`, `cloud.config.CloudConfig`)
with `extra="forbid"`, so a typo in YAML fails loudly. Environment overrides use a prefix and `__`
for nesting (`RELAY_EDGE__CLOUD__ADDRESS=host:50051`); flags use `--set cloud.address=host:50051`.
Values from env and flags are parsed as YAML scalars, so `true`, `3` and `0.5` get their types.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from common.errors import UserError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise UserError(f"empty config key in override {dotted!r}")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UserError(f"config key {key!r} is not a section (override {dotted!r})")
        node = child
    node[keys[-1]] = value


def _parse_scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads on/off/yes/no as booleans; only true/false mean booleans here.
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text
    return value


def read_yaml(file: Path, what: str) -> Any:
    """Parse a YAML file; a missing file or bad YAML is one UserError line naming `what`."""
    try:
        return yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {file}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {file} is not valid YAML: {str(exc).splitlines()[0]}") from None


def validate(model: type[ConfigT], tree: Any, what: str) -> ConfigT:
    """Validate `tree` as `model`; the first problem becomes one UserError line with its location."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UserError(f"invalid {what} at {where}: {first['msg']}") from None


def load_config(
    model: type[ConfigT],
    path: str | Path | None = None,
    *,
    env_prefix: str,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ConfigT:
    """Build and validate `model` from a YAML file, env vars and `key.sub=value` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        loaded = read_yaml(file, "config file") or {}
        if not isinstance(loaded, dict):
            raise UserError(f"config file {file} must hold a mapping at the top level")
        tree = loaded
    env = os.environ if environ is None else environ
    for name, value in sorted(env.items()):
        if name.startswith(env_prefix):
            _set_path(tree, name[len(env_prefix) :].lower().replace("__", "."), _parse_scalar(value))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like key.sub=value")
        _set_path(tree, key.strip(), _parse_scalar(value))
    return validate(model, tree, "config")
