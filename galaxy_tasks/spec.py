"""The job spec: the public JSON a client submits, validated before anything is written.

A spec is either accepted whole, as a valid `JobSpec`, or refused with a `SpecError` that
names the offending field; nothing is recorded for a refused spec.

Each field is declared once, in `JobSpec`: its Python type (what the steps read, null in the
JSON giving the default) and, with `wire(...)`, the type and description its JSON takes.
`SpecModel`, the pydantic model derived from those fields, is the validator and the
published description at once: `parse` validates with it, and `galaxy-tasks schema spec`
prints its JSON Schema (docs/schemas.md), so a client in another language can check a spec
before it sends it. What a JSON Schema cannot say (no unpaired surrogates, outputs that stay
in the job directory once normalised, the bounds on totals) is checked by the validators
below and written in the fields' descriptions.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Annotated, Any, Mapping, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model
from pydantic_core import ErrorDetails

from galaxy_tasks.errors import SpecError
from galaxy_tasks.names import JOB_ID_PATTERN, USER_NAME_PATTERN
from galaxy_tasks.native import MAX_NATIVE

# Patterns are written once, in the dialect every JSON Schema validator shares (ECMA 262:
# `$` is the end of the text; pydantic checks them with Rust's regex, where `$` means the
# same); Python's own checks end them with `\Z`, since its `$` also matches before a newline.
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*"
_QUEUE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}"
ENV_NAME = re.compile(_ENV_NAME + r"\Z")
#: a queue a client may name for its job events (AMQP and Redis both take these)
QUEUE_NAME = re.compile(_QUEUE_NAME + r"\Z")
MAX_COMMAND_BYTES = 256 * 1024
MAX_TEXT = 255
#: bounds that keep a spec storable and a job startable: Linux refuses one environment
#: string over 128 KiB, and the whole of the environment and arguments over ARG_MAX
MAX_ENV_VALUE = 32 * 1024
MAX_ENV_TOTAL = 256 * 1024
MAX_ENV_NAMES = 1000
MAX_PATHS = 10_000
MAX_PATH = 4096
MAX_PATHS_TOTAL = 1024 * 1024
MAX_WHOLE = 2**31 - 1
R = TypeVar("R")

# -- the wire types: what each field's JSON may be -------------------------------------------


class _Refused(ValueError):
    """A check of a validator below: its text is the message of the SpecError."""


def _clean(value: str) -> str:
    """Refuse what no job script or database column can carry."""
    if "\x00" in value:
        raise _Refused("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("is not valid Unicode text (unpaired surrogate)") from None
    return value


def _nonblank(value: str) -> str:
    if not value.strip():
        raise _Refused("must not be empty")
    return _clean(value)


def _path(value: str) -> str:
    if not value.strip():
        raise _Refused("must be a non-empty string")
    return _clean(value)


def _absolute(value: str) -> str:
    if not posixpath.isabs(_path(value)) or posixpath.normpath(value) != value:
        raise _Refused(f"{value!r} is not an absolute, normalised path")
    return value


def _relative(value: str) -> str:
    normal = posixpath.normpath(_path(value))
    if posixpath.isabs(value) or normal == ".." or normal.startswith("../"):
        raise _Refused(f"{value!r} escapes the job directory")
    if normal == "." or not normal.strip():
        raise _Refused(f"{value!r} does not name a file in the job directory")
    return normal


def _paths_total(value: list[str]) -> list[str]:
    if sum(map(len, value)) > MAX_PATHS_TOTAL:
        raise _Refused(f"is larger than {MAX_PATHS_TOTAL} characters in all")
    return value


def _environment_total(value: dict[str, str]) -> dict[str, str]:
    if sum(len(name) + len(text) + 2 for name, text in value.items()) > MAX_ENV_TOTAL:
        raise _Refused(f"is larger than {MAX_ENV_TOTAL} characters in all")
    return value


_NO_NUL = {"not": {"pattern": "\\u0000"}}


Text = Annotated[str, StringConstraints(strict=True, max_length=MAX_TEXT), AfterValidator(_clean),
                 Field(json_schema_extra=_NO_NUL)]
ShortText = Annotated[str, StringConstraints(strict=True, max_length=64), AfterValidator(_clean),
                      Field(json_schema_extra=_NO_NUL)]
PathText = Annotated[str, StringConstraints(strict=True, max_length=MAX_PATH), AfterValidator(_clean),
                     Field(json_schema_extra=_NO_NUL)]
RequiredText = Annotated[str, StringConstraints(strict=True, max_length=MAX_TEXT), AfterValidator(_nonblank),
                         Field(json_schema_extra={"pattern": "\\S", **_NO_NUL})]
Command = Annotated[str, StringConstraints(strict=True, max_length=MAX_COMMAND_BYTES), AfterValidator(_nonblank),
                    Field(json_schema_extra={"pattern": "\\S", **_NO_NUL})]
Whole = Annotated[int, Field(strict=True, ge=1, le=MAX_WHOLE)]
Bytes = Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)]
EnvName = Annotated[str, StringConstraints(strict=True, max_length=MAX_TEXT, pattern=_ENV_NAME + "$")]
EnvValue = Annotated[str, StringConstraints(strict=True, max_length=MAX_ENV_VALUE), AfterValidator(_clean),
                     Field(json_schema_extra=_NO_NUL)]
Environment = Annotated[dict[EnvName, EnvValue], Field(max_length=MAX_ENV_NAMES, json_schema_extra={
    "additionalProperties": False}), AfterValidator(_environment_total)]
InputPath = Annotated[str, StringConstraints(strict=True, max_length=MAX_PATH), AfterValidator(_path),
                      Field(json_schema_extra={"pattern": "\\S", **_NO_NUL})]
OutputPath = Annotated[str, StringConstraints(strict=True, max_length=MAX_PATH), AfterValidator(_relative),
                       Field(json_schema_extra={"pattern": "\\S", "not": {"anyOf": [
                           {"pattern": "\\u0000"}, {"pattern": "^/"}, {"pattern": "^(\\./)*\\.\\.(/|$)"}]}})]
Inputs = Annotated[list[InputPath], Field(max_length=MAX_PATHS), AfterValidator(_paths_total)]
Outputs = Annotated[list[OutputPath], Field(max_length=MAX_PATHS), AfterValidator(_paths_total)]
JobIdText = Annotated[str, StringConstraints(strict=True, pattern=JOB_ID_PATTERN + "$")]
QueueText = Annotated[str, StringConstraints(strict=True, pattern=_QUEUE_NAME + "$")]
NativeText = Annotated[str, StringConstraints(strict=True, max_length=MAX_NATIVE), AfterValidator(_nonblank),
                      Field(json_schema_extra={"pattern": "\\S", **_NO_NUL})]
AbsolutePath = Annotated[str, StringConstraints(strict=True, max_length=MAX_PATH), AfterValidator(_absolute),
                         Field(json_schema_extra={"pattern": "^/", **_NO_NUL})]
AbsolutePaths = Annotated[list[AbsolutePath], Field(max_length=MAX_PATHS), AfterValidator(_paths_total)]
UserNameText = Annotated[str, StringConstraints(strict=True, pattern=USER_NAME_PATTERN + "$")]


def wire(kind: Any, description: str, **options: Any) -> dict[str, Any]:
    """A spec field's metadata: the type its JSON must have, and what the published schema
    says of it (`options` go to pydantic's `Field`)."""
    return {"wire": (kind, {"description": description, **options})}


def wire_model(record: type, name: str, title: str, doc: str) -> type[BaseModel]:
    """The pydantic model that checks the JSON of the dataclass `record`, field for field,
    from each field's `wire` metadata. A field without a default is required; any other
    may be null, which means its default."""
    definitions: dict[str, Any] = {}
    for item in fields(record):
        kind, options = item.metadata["wire"]
        if item.default is MISSING and item.default_factory is MISSING:
            definitions[item.name] = (kind, Field(**options))
        else:
            definitions[item.name] = (kind | None, Field(None, **options))
    model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="forbid", title=title), __doc__=doc,
                                          __module__=__name__, **definitions)
    return model


# -- the spec --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """Where the job's events go: a queue of the client's, and an id of the client's own
    that every event carries back (Galaxy's job id, say)."""

    queue: str = field(metadata=wire(QueueText, "a durable queue of the client's, not one galaxy-tasks consumes"))
    client_id: str | None = field(default=None, metadata=wire(
        Text, "an id of the client's that every event of the job carries back"))


EventsModel = wire_model(Events, "EventsModel", "Events", "Where the job's events go (docs/events.md).")


@dataclass(frozen=True)
class JobSpec:
    """A job as a client asked for it, validated (the fields' order is the schema's)."""

    tool_id: str = field(metadata=wire(RequiredText, "the tool; routing rules match it"))
    command: str = field(metadata=wire(
        Command, "the command line, run by /bin/sh in the job's working directory"))
    tool_version: str | None = field(default=None, metadata=wire(ShortText, "recorded with the job"))
    user: str | None = field(default=None, metadata=wire(Text, "recorded, and matched by routing rules"))
    environment: dict[str, str] = field(default_factory=dict, metadata=wire(
        Environment, f"added to the job's environment (at most {MAX_ENV_TOTAL} characters in all, counting each "
                     "name and value plus 2)"))
    inputs: list[str] = field(default_factory=list, metadata=wire(
        Inputs, f"paths recorded with the job (at most {MAX_PATHS_TOTAL} characters in all)"))
    outputs: list[str] = field(default_factory=list, metadata=wire(
        Outputs, "paths relative to the job directory that must exist after the command ran, or the job ends "
                 f"`error`; once normalised they must stay inside it (at most {MAX_PATHS_TOTAL} characters in all)"))
    returns: list[str] = field(default_factory=list, metadata=wire(
        AbsolutePaths, "absolute, normalised paths of the client's (files or directories) that a job on a "
                       "destination without a shared filesystem sends home after it ran, whatever it left there (a "
                       "directory: every regular file below it that it changed or made); elsewhere they mean "
                       "nothing (docs/staging.md#galaxy-jobs)"))
    rewrite: list[str] = field(default_factory=list, metadata=wire(
        AbsolutePaths, "absolute, normalised paths of staged text files (a directory: the files below it) whose "
                       "copies, on a destination without a shared filesystem, name the staged copies: each path of "
                       "an input, a return and the job directory in them is rewritten as in the command; elsewhere "
                       "they mean nothing"))
    cores: int = field(default=1, metadata=wire(Whole, "cores the job needs (GALAXY_SLOTS); default 1"))
    memory_mb: int | None = field(default=None, metadata=wire(
        Whole, "memory the job needs, in MB (GALAXY_MEMORY_MB)"))
    walltime_s: int | None = field(default=None, metadata=wire(Whole, "the longest the job may run, in seconds"))
    destination: str | None = field(default=None, metadata=wire(
        Text, "a destination name, overriding the routing rules"))
    environment_setup_file: str | None = field(default=None, metadata=wire(
        PathText, "a file the job script sources before the command"))
    id: str | None = field(default=None, metadata=wire(
        JobIdText, "a job id chosen by the client: a duplicated submission then runs once"))
    events: Events | None = field(default=None, metadata=wire(
        EventsModel, "where the job's events go (docs/events.md)"))
    reuse: bool = field(default=False, metadata=wire(
        bool, "allow an earlier ok job with the same tool, version, command, environment and input contents (that "
              "also allowed reuse) to stand for this one: its outputs are linked in and the job ends ok without "
              "running", strict=True))
    run_as: str | None = field(default=None, metadata=wire(
        UserNameText, "the Unix user the job runs as (docs/security.md#jobs-as-the-real-user): started through the "
                      "privileged helper, which refuses root, system users and users outside its allowed group"))
    output_size_bytes: int | None = field(default=None, metadata=wire(
        Bytes, "the largest any file of the job may grow, in bytes (a client's own limit, such as Galaxy's "
               "`output_size`); the job_conf's output_size limits bound it too"))
    gpus: int | None = field(default=None, metadata=wire(
        Whole, "GPUs the job needs (TPV's and Galaxy's `gpus`); only a destination with `max_gpus` takes such a job"))
    native_specification: str | None = field(default=None, metadata=wire(
        NativeText, "the job's own scheduler options in the scheduler's words (Galaxy's and TPV's "
                    "`native_specification`: sbatch's for Slurm, qsub's for Grid Engine); each option must be one its "
                    "destination's `allow_native` lists, and each value 1-255 letters, digits or _.,:+=@/%*[]-"))
    handover_dir: str | None = field(default=None, metadata=wire(
        AbsolutePath, "a directory of the client's that a job with run_as is given while it runs, and that comes "
                      "back to the client's user at its end (Galaxy's job directory, where the tool writes its "
                      "outputs): absolute and normalised; the privileged helper takes only one under its "
                      "handover_roots, laid out as Galaxy lays out job directories, owned by the worker's user and "
                      "marked for this job (docs/security.md#jobs-as-the-real-user); without run_as it means nothing"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = frozenset(JobSpec.__dataclass_fields__)

SpecModel = wire_model(JobSpec, "SpecModel", "JobSpec", "A job galaxy-tasks is asked to run "
                       "(docs/task-contract.md); null means the default.\nThe server also refuses text with "
                       "unpaired surrogates.")

#: the fields whose null means a default other than None: a value, or a factory of one
_VALUES = [(item.name, item.default) for item in fields(JobSpec) if item.default not in (MISSING, None)]
_FACTORIES = [(item.name, item.default_factory) for item in fields(JobSpec) if item.default_factory is not MISSING]
_ORDER = {name: index for index, name in enumerate(SpecModel.model_fields)}
_KNOWN = ", ".join(sorted(FIELDS))


def parse_json(text: str | bytes) -> JobSpec:
    """Parse a spec from JSON text; invalid JSON is refused like any other bad field."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SpecError("spec", f"invalid JSON: {exc}") from None
    return parse(data)


def parse(data: Any) -> JobSpec:
    if not isinstance(data, Mapping):
        raise SpecError("spec", f"must be a JSON object, not {type(data).__name__}")
    try:
        model = SpecModel.model_validate(data if isinstance(data, dict) else dict(data))
    except ValidationError as exc:
        raise _spec_error(exc.errors(include_url=False)) from None
    values = model.__dict__  # the model is thrown away: its fields become the spec's
    for name, value in _VALUES:
        if values[name] is None:
            values[name] = value
    for name, factory in _FACTORIES:
        if values[name] is None:
            values[name] = factory()
    events = values["events"]
    if events is not None:
        values["events"] = _record(Events, events.__dict__)
    return _record(JobSpec, values)


def _record(cls: type[R], values: dict[str, Any]) -> R:
    """The frozen dataclass `cls` made straight from validated fields: its __init__ would set
    them one object.__setattr__ at a time, which costs as much as the validation itself."""
    made = object.__new__(cls)
    made.__dict__.update(values)
    return made


# -- refusals, in the words of a SpecError --------------------------------------------------


def _spec_error(errors: list[ErrorDetails]) -> SpecError:
    """The first of pydantic's errors, in the order a reader fixes them: unknown fields
    (sorted) first, then the fields in the spec's order."""
    def rank(error: ErrorDetails) -> tuple[int, int, str]:
        loc = error["loc"]
        unknown = error["type"] in ("extra_forbidden", "invalid_key")
        top = -1 if unknown and len(loc) == 1 else _ORDER.get(str(loc[0]), len(_ORDER)) if loc else -2
        return top, 0 if unknown else 1, str(loc[-1]) if unknown else ""

    error = min(errors, key=rank)
    return SpecError(_field_name(error["loc"]), _message(error))


_PATH_LISTS = ("inputs", "outputs", "returns", "rewrite")


def _field_name(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "spec"
    name = str(loc[0]) or '""'
    for part in loc[1:]:
        if part == "[key]":
            continue
        name += f"[{part}]" if isinstance(part, int) and loc[0] in _PATH_LISTS else f".{part}"
    return name


def _message(error: ErrorDetails) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    ctx = error.get("ctx") or {}
    top = str(loc[0]) if loc else ""
    if kind in ("extra_forbidden", "invalid_key"):
        return "unknown field (known fields: client_id, queue)" if top == "events" else \
            f"unknown field (known fields: {_KNOWN})"
    if "[key]" in loc:
        return "is not a valid environment variable name"
    if kind == "value_error" and isinstance(ctx.get("error"), _Refused):
        return str(ctx["error"])
    if kind == "missing" or (value is None and top in ("tool_id", "command") and len(loc) == 1):
        return "is required"
    if loc == ("events",) or kind == "model_type":
        return f"must be an object with a 'queue', not {type(value).__name__}"
    if loc == ("events", "queue"):
        return ("must be a queue name: 1-200 letters, digits, '_', '.', ':' or '-', starting with a letter or "
                "digit")
    if top == "id":
        return "must be 1-36 letters, digits, '-' or '_', starting with a letter or digit"
    if top in _PATH_LISTS:
        if len(loc) == 1:
            return f"has {len(value)} paths, more than {MAX_PATHS}" if kind == "too_long" else \
                f"must be a list of paths, not {type(value).__name__}"
        if kind == "string_too_long":
            return f"is longer than {MAX_PATH} characters"
        return "must be a non-empty string"
    if top == "environment" and len(loc) == 1:
        return f"has {len(value)} variables, more than {MAX_ENV_NAMES}" if kind == "too_long" else \
            f"must be an object of names to strings, not {type(value).__name__}"
    if kind == "int_type":
        return f"must be a whole number, not {value!r}"
    if kind == "greater_than_equal":
        return f"must be at least 1, not {value}"
    if kind == "less_than_equal":
        return f"is too large: {value}"
    if kind == "string_type":
        return f"must be a string, not {type(value).__name__}"
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters"
    return str(error["msg"])
