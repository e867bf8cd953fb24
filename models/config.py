"""Config dataclass helpers: build from presets, validate keys and types, parse --set overrides."""

import dataclasses
import json
from typing import Any, TypeVar

from edgeseq.errors import ConfigError

C = TypeVar("C")


def coerce_value(name: str, value: Any, kind: type) -> Any:
    """Turn a JSON value or a --set string into `kind`, or say which key and type was wrong."""
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}={value!r} is not a boolean", "use true or false")
        try:
            value = json.loads(text) if kind is not float else float(text)
        except (ValueError, json.JSONDecodeError):
            raise ConfigError(
                f"{name}={value!r} is not a {kind.__name__}", f"give {name} a {kind.__name__} value"
            ) from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not a boolean", "use true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} is not an integer", f"give {name} a whole number")
    if not isinstance(value, kind):
        raise ConfigError(f"{name}={value!r} is not a {kind.__name__}", f"give {name} a {kind.__name__}")
    return value


def config_from_dict(cls: type[C], values: dict[str, Any], family: str) -> C:
    """Build `cls` from a dict, rejecting unknown keys and values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields) - {"family"})
    if unknown:
        raise ConfigError(
            f"unknown {family} config key(s): {', '.join(unknown)}",
            f"valid keys are {', '.join(sorted(fields))}",
        )
    kinds = {name: type(f.default) for name, f in fields.items()}
    kwargs = {k: coerce_value(k, v, kinds[k]) for k, v in values.items() if k != "family"}
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['d_model=64', ...] -> {'d_model': '64'}; values are coerced later against the config."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is not key=value", "write it as --set d_model=128")
        out[key.strip()] = value
    return out


def config_to_dict(config: Any, family: str) -> dict[str, Any]:
    return {"family": family, **dataclasses.asdict(config)}
