"""Where configuration values come from besides the file itself (contract §3, §20).

Secrets do not belong in a ConfigMap or a compose file: any string value of the file
may instead be `{file: /run/secrets/x}` (the file's contents, less a final newline)
or `{env: NAME}`, and each environment override has a `_FILE` form that names a file
(`GATEWAY_DATABASE_URL_FILE`, as the official PostgreSQL image does it). A missing
file or variable is an error naming the key path — never an empty value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Environment variable → where it goes in the configuration.
OVERRIDES = {
    "GATEWAY_DATABASE_URL": ("database", "url"),
    "GATEWAY_ADMIN_TOKEN": ("admin_token",),
    "GATEWAY_REDIS_URL": ("rate_limiting", "redis_url"),
}
_REFERENCES = ("file", "env")


class SourceError(Exception):
    """A reference that cannot be followed; the message names the key path."""


def resolve_references(raw: Any, env: Mapping[str, str], base_dir: Path, where: str = "") -> Any:
    """`raw` with every `{file: …}` and `{env: …}` replaced by the value it names."""
    if isinstance(raw, dict):
        if len(raw) == 1 and next(iter(raw)) in _REFERENCES:
            ((kind, name),) = raw.items()
            return _follow(kind, name, env, base_dir, where or "(top level)")
        return {
            key: resolve_references(value, env, base_dir, f"{where}.{key}".lstrip("."))
            for key, value in raw.items()
        }
    if isinstance(raw, list):
        return [
            resolve_references(value, env, base_dir, f"{where}[{index}]")
            for index, value in enumerate(raw)
        ]
    return raw


def _follow(kind: str, name: object, env: Mapping[str, str], base_dir: Path, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise SourceError(f"{where}: {{{kind}: …}} takes a non-empty string")
    if kind == "env":
        value = env.get(name)
        if value is None:
            raise SourceError(f"{where}: environment variable {name} is not set")
        return value
    return read_secret(base_dir / name, where)


def read_secret(path: Path, where: str) -> str:
    """A file's contents without the final newline an editor or `echo` leaves."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{where}: cannot read {path}: {exc.__class__.__name__}") from None
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise SourceError(f"{where}: {path} is empty")
    return value


def apply_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """The environment's overrides, each from the variable or from its `_FILE` file."""
    for variable, key in OVERRIDES.items():
        value = env.get(variable)
        named = env.get(variable + "_FILE")
        if named:
            value = read_secret(Path(named), variable + "_FILE")
        if not value:
            continue
        section = raw
        for part in key[:-1]:
            found = section.setdefault(part, {})
            if not isinstance(found, dict):
                raise SourceError(f"{part}: expected a mapping")
            section[part] = section = dict(found)
        section[key[-1]] = value
