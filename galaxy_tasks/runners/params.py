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

from pydantic import AfterValidator, BaseModel, ConfigDict, create_model, model_validator
from pydantic import Field as ModelField

from galaxy_tasks.confmodels import refuse, says, validate
from galaxy_tasks.errors import ConfigError
from galaxy_tasks.yamlconf import Where

P = TypeVar("P")


def param(default: Any = None, *, minimum: float | None = None, choices: tuple[str, ...] | None = None,
          check: Callable[[Any], str | None] | None = None, doc: str = "") -> Any:
    """A params field: its default, and the checks `load` applies to a given value (`check`
    returns what is wrong with a value of the right type, or None)."""
    return field(default=default, metadata={"minimum": minimum, "choices": choices, "check": check, "doc": doc})


def _checking(check: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        problem = check(value)
        if problem:
            raise ValueError(problem)
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
        annotated: Any = Annotated[Literal[tuple(choices)], says(f"must be one of {', '.join(choices)}")] \
            if choices else Annotated[kind, ModelField(strict=kind is not str, ge=f.metadata.get("minimum"))]
        if f.metadata.get("check") is not None:  # after the type, the minimum and the choices
            annotated = Annotated[annotated, AfterValidator(_checking(f.metadata["check"]))]
        if type(None) in kinds:
            annotated = annotated | None
        default = None if f.default is MISSING else f.default
        definitions[f.name] = (annotated, ModelField(default, description=f.metadata.get("doc") or None))
    config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, title=cls.__name__)
    known = sorted(definitions)

    def only_known(value: Any) -> Any:
        unknown = [key for key in value if key not in definitions] if isinstance(value, Mapping) else []
        if unknown:
            raise refuse(f"unknown param of this runner (known: {', '.join(known) or 'none'})", unknown[0])
        return value

    validators: Any = {"only_known": model_validator(mode="before")(only_known)}
    built: type[BaseModel] = create_model(cls.__name__, __config__=config, __validators__=validators, **definitions)
    return built


def checked(cls: type, name: str, annotated: Any) -> Any:
    """`annotated` with param `name`'s own check, for a key that stands for that param
    elsewhere (a destination's `native_specification`)."""
    check = next(f.metadata.get("check") for f in fields(cls) if f.name == name)
    return annotated if check is None else Annotated[annotated, AfterValidator(_checking(check))]


def load(cls: type[P], raw: Mapping[str, Any] | None, where: Where | None = None) -> P:
    """`raw` checked against `cls` (a params dataclass); a ConfigError names the field."""
    where = Where(where.source, where.path, where.line, raw or {}) if where else Where("params", node=raw or {})
    checked = validate(model(cls), where)  # type: ignore[arg-type]  # a class is hashable
    return cls(**{str(key): getattr(checked, str(key)) for key in raw or {}})


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


def _type_name(hint: Any) -> str:
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k is not type(None)]
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    text = " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    return text + (" (or null)" if type(None) in typing.get_args(hint) else "")


__all__ = ["ConfigError", "checked", "describe", "load", "model", "param"]
