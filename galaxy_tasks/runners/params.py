"""Typed runner params, checked when the job_conf loads.

Each runner declares its params as a frozen dataclass: a type and a default per field, and
(in the field's metadata, through `param`) a minimum, a set of choices or a check of its
own (a function that returns what is wrong with a value, or None). `model` turns the
dataclass into a pydantic model, which both checks a destination's `params:` (`load`) and
describes them in the job_conf's published JSON Schema (`galaxy-tasks schema job-conf`). A
typo or a wrong value stops the configuration from loading, naming the line of the first
bad one, instead of failing the first job (Galaxy's `RunnerParams` with `DEFAULT_SPECS` is
the precedent).
"""
from __future__ import annotations

import functools
import types
import typing
from dataclasses import MISSING, field, fields
from typing import Annotated, Any, Callable, Literal, Mapping, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, create_model
from pydantic import Field as ModelField

from galaxy_tasks.errors import ConfigError
from galaxy_tasks.yamlconf import Where

P = TypeVar("P")


def param(default: Any = None, *, minimum: float | None = None, choices: tuple[str, ...] | None = None,
          check: Callable[[Any], str | None] | None = None, doc: str = "") -> Any:
    """A params field: its default, and the checks `load` applies to a given value (`check`
    returns what is wrong with a value of the right type, or None)."""
    return field(default=default, metadata={"minimum": minimum, "choices": choices, "check": check, "doc": doc})


class _Problem(ValueError):
    """What a param's own `check` found wrong: the message of the ConfigError."""


def _checking(check: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        problem = check(value)
        if problem:
            raise _Problem(problem)
        return value

    return run


@functools.cache
def model(cls: type) -> type[BaseModel]:
    """The pydantic model of a params dataclass: the same names, types, defaults, minimums
    and choices, each field's doc as its description. A string param takes a number too
    (YAML reads `qstat: 5` as one)."""
    hints = typing.get_type_hints(cls)
    definitions: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init:
            continue
        kinds = _kinds(hints[f.name])
        kind = next((k for k in kinds if k is not type(None)), str)
        choices = f.metadata.get("choices")
        annotated: Any = Literal[tuple(choices)] if choices else Annotated[
            kind, ModelField(strict=kind is not str, ge=f.metadata.get("minimum"))]
        if f.metadata.get("check") is not None:  # after the type, the minimum and the choices
            annotated = Annotated[annotated, AfterValidator(_checking(f.metadata["check"]))]
        if type(None) in kinds:
            annotated = annotated | None
        default = None if f.default is MISSING else f.default
        definitions[f.name] = (annotated, ModelField(default, description=f.metadata.get("doc") or None))
    config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, title=cls.__name__)
    built: type[BaseModel] = create_model(cls.__name__, __config__=config, **definitions)
    return built


def load(cls: type[P], raw: Mapping[str, Any] | None, where: Where | None = None) -> P:
    """`raw` checked against `cls` (a params dataclass); a ConfigError names the field."""
    where = where or Where("params")
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise where.error("must be a mapping")
    given = {str(key): value for key, value in raw.items()}
    try:
        checked = model(cls).model_validate(given)  # type: ignore[arg-type]  # a class is hashable
    except ValidationError as exc:
        order = {key: index for index, key in enumerate(given)}
        error = min(exc.errors(include_url=False), key=lambda e: order.get(str(e["loc"][0]), len(order)))
        key = error["loc"][0]
        raise where.key(raw, key).error(_message(cls, str(key), error)) from None
    return cls(**{key: getattr(checked, key) for key in given})


def _message(cls: type, key: str, error: Any) -> str:
    kind, value = error["type"], error.get("input")
    known = {f.name: f for f in fields(cls) if f.init}
    if kind == "extra_forbidden":
        return f"unknown param of this runner (known: {', '.join(sorted(known)) or 'none'})"
    hint = typing.get_type_hints(cls)[key]
    if value is None:
        return f"must be {_type_name(hint)}, not null"
    if kind == "greater_than_equal":
        return f"must be at least {known[key].metadata['minimum']:g}, not {value!r}"
    if kind == "value_error" and isinstance((error.get("ctx") or {}).get("error"), _Problem):
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return f"must be one of {', '.join(known[key].metadata['choices'])}, not {value!r}"
    kinds = [k for k in _kinds(hint) if k is not type(None)]
    if kinds and kinds[0] is bool:
        return f"must be true or false, not {value!r}"
    return f"must be {_type_name(hint).removesuffix(' (or null)')}, not {value!r}"


def _kinds(hint: Any) -> tuple[Any, ...]:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if union else (hint,)


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


def _type_name(hint: Any) -> str:
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k is not type(None)]
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    text = " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    return text + (" (or null)" if type(None) in typing.get_args(hint) else "")


__all__ = ["ConfigError", "describe", "load", "model", "param"]
