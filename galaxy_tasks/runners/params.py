"""Typed runner params, checked when the job_conf loads.

Each runner declares its params as a frozen dataclass: a type and a default per field, and
(in the field's metadata, through `param`) a minimum, a set of choices or a check of its
own (a function that returns what is wrong with a value, or None). `load` checks a
destination's `params:` against it and names the line of the first bad one, so a typo or a
wrong value stops the configuration from loading instead of failing the first job (Galaxy's
`RunnerParams` with `DEFAULT_SPECS` is the precedent).
"""
from __future__ import annotations

import types
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Any, Callable, Mapping, TypeVar

from galaxy_tasks.errors import ConfigError
from galaxy_tasks.yamlconf import Where

P = TypeVar("P")


def param(default: Any = None, *, minimum: float | None = None, choices: tuple[str, ...] | None = None,
          check: Callable[[Any], str | None] | None = None, doc: str = "") -> Any:
    """A params field: its default, and the checks `load` applies to a given value (`check`
    returns what is wrong with a value of the right type, or None)."""
    return field(default=default, metadata={"minimum": minimum, "choices": choices, "check": check, "doc": doc})


def load(cls: type[P], raw: Mapping[str, Any] | None, where: Where | None = None) -> P:
    """`raw` checked against `cls` (a params dataclass); a ConfigError names the field."""
    where = where or Where("params")
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise where.error("must be a mapping")
    known = {f.name: f for f in fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        here = where.key(raw, key)
        if key not in known:
            raise here.error(f"unknown param of this runner (known: {', '.join(sorted(known)) or 'none'})")
        values[key] = _checked(value, hints[key], known[key], here)
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) of every param: for docs and `galaxy-tasks config`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        default = None if f.default is MISSING else f.default
        out.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("doc", "")))
    return out


def markdown() -> str:
    """Every registered runner's params as Markdown tables (docs/configuration.md has them)."""
    from galaxy_tasks.runners import REGISTRY, runner_class

    out: list[str] = []
    for name in REGISTRY:
        out += [f"### `{name}`", "", "| param | type | default | meaning |", "|---|---|---|---|"]
        for param_name, kind, default, doc in describe(runner_class(name).Params):
            shown = "(none)" if default in (None, "") else f"`{default}`"
            out.append(f"| `{param_name}` | {kind} | {shown} | {doc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _checked(value: Any, hint: Any, spec: Field[Any], here: Where) -> Any:
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None:
        if type(None) in kinds:
            return None
        raise here.error(f"must be {_type_name(hint)}, not null")
    kind = next((k for k in kinds if k is not type(None)), str)
    if kind is bool:
        if not isinstance(value, bool):
            raise here.error(f"must be true or false, not {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise here.error(f"must be a whole number, not {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise here.error(f"must be a number, not {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise here.error(f"must be a string, not {value!r}")
        value = str(value)
    minimum = spec.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise here.error(f"must be at least {minimum:g}, not {value!r}")
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        raise here.error(f"must be one of {', '.join(choices)}, not {value!r}")
    check = spec.metadata.get("check")
    problem = check(value) if check is not None else None
    if problem:
        raise here.error(problem)
    return value


def _type_name(hint: Any) -> str:
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k is not type(None)]
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    text = " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    return text + (" (or null)" if type(None) in typing.get_args(hint) else "")


__all__ = ["ConfigError", "describe", "load", "param"]
