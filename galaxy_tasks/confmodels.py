"""Pydantic models as the parser of YAML configuration, with errors that name the place.

A model says once what a configuration may hold: it checks a loaded document (`validate`)
and it is the published JSON Schema. Pydantic's errors are turned into one ConfigError
that names the file, the line and the key (`job_conf.yml:12: destinations.big.params.x:
must be ...`): the first in the document's order, in the project's words. `says` gives a
type one message of its own (a union's members would each report theirs); `refuse` is the
error a validator raises, optionally about a key inside the value it checks.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import ErrorDetails, PydanticCustomError

from galaxy_tasks.errors import ConfigError
from galaxy_tasks.yamlconf import Where

M = TypeVar("M", bound=BaseModel)

#: what a value of the wrong type must be, by pydantic's error type
_MUST_BE = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "list_type": "a list",
}


def validate(model: type[M], where: Where, context: Any = None) -> M:
    """`where.node` checked by `model`, or the ConfigError of its first problem."""
    try:
        return model.model_validate(where.node, context=context)
    except ValidationError as exc:
        raise refusal(exc, where) from None


def refusal(exc: ValidationError, where: Where) -> ConfigError:
    """The first of `exc`'s errors in the document (by line), placed below `where`."""
    placed = [_placed(error, where) for error in exc.errors(include_url=False)]
    place, message = min(placed, key=lambda found: found[0].line or 0)
    return place.error(message)


def refuse(message: str, *keys: str) -> PydanticCustomError:
    """An error for a validator to raise: `message` as it is, about `keys` inside the value."""
    return PydanticCustomError("refused", "{message}", {"message": message, "keys": keys})


def says(message: str | Callable[[Any], str]) -> WrapValidator:
    """The type's own message for any value it refuses: `message` and the value, or what
    `message(value)` says."""
    def run(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise refuse(message(value) if callable(message) else f"{message}, not {shown(value)}") from None

    return WrapValidator(run)


def shown(value: Any) -> str:
    """A value as an error quotes it: YAML's null, and no more than a line."""
    text = "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _placed(error: ErrorDetails, where: Where) -> tuple[Where, str]:
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
    if kind in ("extra_forbidden", "missing"):
        parent = where.at(*loc[:-1])
        line = where.at(*loc).line if kind == "extra_forbidden" else parent.line
        word = "unknown" if kind == "extra_forbidden" else "missing"
        return Where(parent.source, parent.path, line, parent.node), f"{word} key {loc[-1]!r}"
    place = where.at(*loc)
    for key in ctx.get("keys", ()):
        place = place.named(key)
    if kind == "refused":
        return place, ctx["message"]
    if kind in ("value_error", "assertion_error"):
        return place, str(ctx.get("error") or error["msg"])
    return place, f"{_must(kind, ctx, error['msg'])}, not {shown(error['input'])}"


def _must(kind: str, ctx: dict[str, Any], fallback: str) -> str:
    if kind in _MUST_BE:
        return f"must be {_MUST_BE[kind]}"
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("above", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("below", "lt")}
    if kind in bounds:
        words, name = bounds[kind]
        return f"must be {words} {ctx[name]:g}" if isinstance(ctx[name], float) else f"must be {words} {ctx[name]}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty" if ctx.get("min_length") == 1 else f"must have at least {ctx['min_length']}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    return fallback
