"""The job spec: the public JSON a client submits, validated before anything is written.

A spec is either accepted whole, as a valid `JobSpec`, or refused with a `SpecError` that
names the offending field; nothing is recorded for a refused spec.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from galaxy_tasks.errors import SpecError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,35}\Z")
#: a queue a client may name for its job events (AMQP and Redis both take these)
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}\Z")
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


@dataclass(frozen=True)
class Events:
    """Where the job's events go: a queue of the client's, and an id of the client's own
    that every event carries back (Galaxy's job id, say)."""

    queue: str
    client_id: str | None = None


@dataclass(frozen=True)
class JobSpec:
    tool_id: str
    command: str
    tool_version: str | None = None
    user: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    cores: int = 1
    memory_mb: int | None = None
    walltime_s: int | None = None
    destination: str | None = None
    environment_setup_file: str | None = None
    id: str | None = None
    events: Events | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = frozenset(JobSpec.__dataclass_fields__)


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
    unknown = sorted(str(key) for key in data if key not in FIELDS)
    if unknown:
        raise SpecError(unknown[0] or "\"\"", f"unknown field (known fields: {', '.join(sorted(FIELDS))})")
    return JobSpec(
        tool_id=_required_text(data, "tool_id"),
        command=_command(data),
        tool_version=_text(data, "tool_version", limit=64),
        user=_text(data, "user"),
        environment=_environment(data.get("environment")),
        inputs=_paths(data.get("inputs"), "inputs", relative=False),
        outputs=_paths(data.get("outputs"), "outputs", relative=True),
        cores=_positive(data, "cores") or 1,
        memory_mb=_positive(data, "memory_mb"),
        walltime_s=_positive(data, "walltime_s"),
        destination=_text(data, "destination"),
        environment_setup_file=_text(data, "environment_setup_file", limit=4096),
        id=_job_id(data.get("id")),
        events=_events(data.get("events")),
    )


def _text(data: Mapping, name: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise SpecError(name, "is required")
        return None
    if not isinstance(value, str):
        raise SpecError(name, f"must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise SpecError(name, "must not be empty")
    if len(value) > limit:
        raise SpecError(name, f"is longer than {limit} characters")
    _check_chars(name, value)
    return value


def _required_text(data: Mapping[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = _text(data, name, required=True, limit=limit)
    assert value is not None
    return value


def _check_chars(name: str, value: str) -> None:
    """Refuse what no job script or database column can carry."""
    if "\x00" in value:
        raise SpecError(name, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(name, "is not valid Unicode text (unpaired surrogate)") from None


def _command(data: Mapping) -> str:
    command = _text(data, "command", required=True, limit=MAX_COMMAND_BYTES)
    assert command is not None
    return command


def _positive(data: Mapping, name: str, default: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, f"must be a whole number, not {value!r}")
    if value < 1:
        raise SpecError(name, f"must be at least 1, not {value}")
    if value > 2**31 - 1:
        raise SpecError(name, f"is too large: {value}")
    return value


def _environment(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError("environment", f"must be an object of names to strings, not {type(value).__name__}")
    if len(value) > MAX_ENV_NAMES:
        raise SpecError("environment", f"has {len(value)} variables, more than {MAX_ENV_NAMES}")
    environment: dict[str, str] = {}
    total = 0
    for name, text in value.items():
        where = f"environment.{name}"
        if not isinstance(name, str) or not ENV_NAME.match(name) or len(name) > MAX_TEXT:
            raise SpecError(where, "is not a valid environment variable name")
        if not isinstance(text, str):
            raise SpecError(where, f"must be a string, not {type(text).__name__}")
        if len(text) > MAX_ENV_VALUE:
            raise SpecError(where, f"is longer than {MAX_ENV_VALUE} characters")
        _check_chars(where, text)
        total += len(name) + len(text) + 2
        if total > MAX_ENV_TOTAL:
            raise SpecError("environment", f"is larger than {MAX_ENV_TOTAL} characters in all")
        environment[name] = text
    return environment


def _paths(value: Any, name: str, *, relative: bool) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(name, f"must be a list of paths, not {type(value).__name__}")
    if len(value) > MAX_PATHS:
        raise SpecError(name, f"has {len(value)} paths, more than {MAX_PATHS}")
    paths = []
    total = 0
    for index, path in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(path, str) or not path.strip():
            raise SpecError(where, "must be a non-empty string")
        if len(path) > MAX_PATH:
            raise SpecError(where, f"is longer than {MAX_PATH} characters")
        total += len(path)
        if total > MAX_PATHS_TOTAL:
            raise SpecError(name, f"is larger than {MAX_PATHS_TOTAL} characters in all")
        _check_chars(where, path)
        if relative:
            normal = posixpath.normpath(path)
            if posixpath.isabs(path) or normal == ".." or normal.startswith("../"):
                raise SpecError(where, f"{path!r} escapes the job directory")
            if normal == "." or not normal.strip():
                raise SpecError(where, f"{path!r} does not name a file in the job directory")
            path = normal
        paths.append(path)
    return paths


def _events(value: Any) -> Events | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError("events", f"must be an object with a 'queue', not {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in ("queue", "client_id"))
    if unknown:
        raise SpecError(f"events.{unknown[0]}", "unknown field (known fields: client_id, queue)")
    queue = value.get("queue")
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
        raise SpecError("events.queue", "must be a queue name: 1-200 letters, digits, '_', '.', ':' or '-', "
                                        "starting with a letter or digit")
    try:
        return Events(queue, _text(value, "client_id"))
    except SpecError as exc:
        raise SpecError(f"events.{exc.field}", exc.message) from None


def _job_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not JOB_ID.match(value):
        raise SpecError("id", "must be 1-36 letters, digits, '-' or '_', starting with a letter or digit")
    return value
