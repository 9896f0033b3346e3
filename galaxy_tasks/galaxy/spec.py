"""What Galaxy knows about a job, as a galaxy-tasks job spec (the JSON `submit_job` takes).

Plain Python: the runner plugin fills a `GalaxyJob` from Galaxy's job wrapper, and
everything that decides what galaxy-tasks is asked to run is here, testable without Galaxy.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from galaxy_tasks.names import JOB_ID, USER_NAME
from galaxy_tasks.spec import MAX_PATHS, MAX_PATHS_TOTAL, MAX_TEXT

#: destination params read, first match wins (Galaxy's own runners and TPV use these names)
CORES_PARAMS = ("galaxy_tasks_cores", "cores", "local_slots", "GALAXY_SLOTS")
MEMORY_MB_PARAMS = ("galaxy_tasks_memory_mb", "memory_mb", "GALAXY_MEMORY_MB")
MEMORY_GB_PARAMS = ("mem",)  # TPV's `mem` is in GB
WALLTIME_PARAMS = ("galaxy_tasks_walltime", "walltime", "walltime_s")
GPUS_PARAMS = ("galaxy_tasks_gpus", "gpus")  # TPV's `gpus` (0: none)
NATIVE_PARAMS = ("galaxy_tasks_native_specification", "native_specification")
DESTINATION_PARAM = "galaxy_tasks_destination"
TOOL_VERSION_LIMIT = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class MappingError(ValueError):
    """A destination param that cannot be read; the message names it."""


@dataclass(frozen=True)
class GalaxyLimits:
    """Galaxy's own limits on a job, which its runners' monitor loop checks: the job_conf's
    `limits:` walltime and output_size, and the tool's `<resource type="timelimit">`."""

    walltime_s: int | None = None
    output_size_bytes: int | None = None
    tool_timelimit_s: int | None = None


@dataclass(frozen=True)
class GalaxyJob:
    """The facts about one Galaxy job that its galaxy-tasks job is made from."""

    server_name: str
    job_id: int
    tool_id: str
    job_file: str
    stdout_file: str
    stderr_file: str
    exit_code_file: str
    tool_version: str | None = None
    user: str | None = None
    attempt: int = 0  # how many times Galaxy resubmitted this job before
    params: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()  # the destination's `env:` entries
    limits: GalaxyLimits = field(default_factory=GalaxyLimits)
    run_as: str | None = None  # the Unix user the job runs as (`real_system_user`); None: galaxy-tasks' own
    #: Galaxy's job directory, handed to that user while the job runs (only with run_as)
    handover_dir: str | None = None
    #: what a destination without a shared filesystem stages (docs/staging.md#galaxy-jobs), all
    #: absolute: Galaxy's job directory, the input datasets' files (their metadata files and
    #: extra files directories too), where the outputs go, the tool's files the job reads, and
    #: Galaxy's files that name paths (the tool script, config files)
    working_directory: str | None = None
    input_files: tuple[str, ...] = ()
    output_files: tuple[str, ...] = ()
    tool_files: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    cores: int = 1
    memory_mb: int | None = None
    walltime_s: int | None = None
    gpus: int | None = None
    native_specification: str | None = None


def task_job_id(server_name: str, job_id: int, attempt: int = 0) -> str:
    """The galaxy-tasks id of a Galaxy job: stable, so resending after a crash finds the same
    job, and new for each resubmission, which is another run. A server name that does not
    fit is replaced by a short digest of it."""
    suffix = f"-{job_id}" + (f"-r{attempt}" if attempt else "")
    server = _UNSAFE.sub("_", server_name).strip("_-") or "galaxy"
    candidate = f"g-{server}{suffix}"
    if not JOB_ID.match(candidate):
        digest = hashlib.sha256(server_name.encode()).hexdigest()[:10]
        candidate = f"g-{digest}{suffix}"
    if not JOB_ID.match(candidate):
        raise MappingError(f"Galaxy job id {job_id} does not fit a galaxy-tasks job id")
    return candidate


def galaxy_job_id(task_id: str) -> int | None:
    """The Galaxy job id inside a galaxy-tasks id made by `task_job_id` under any name (a
    handler renamed or retired since, another handler of the same Galaxy), or None. Only a
    candidate: the job is Galaxy's only if its recorded external id is exactly `task_id`."""
    match = re.fullmatch(r"g-[A-Za-z0-9_-]+?-(\d{1,18})(?:-r\d{1,9})?", task_id)
    return int(match[1]) if match else None


def real_system_user(setting: str | None, email: str | None, username: str | None,
                     site_map: Mapping[str, str] | None = None) -> str:
    """The Unix user a Galaxy user's jobs run as, in Galaxy's own words: a site's mapping
    first (by email, then by Galaxy username), then Galaxy's `real_system_username`:
    `user_email` (the email's local part), `username` (the Galaxy username), or else the
    name of one common system user. MappingError names a user that yields no Unix name."""
    mapped = site_map or {}
    if email and email in mapped:
        name: str | None = mapped[email]
    elif username and username in mapped:
        name = mapped[username]
    elif setting in (None, "", "user_email"):
        name = email.split("@", 1)[0] if email else None
    elif setting == "username":
        name = username
    else:
        name = setting
    who = email or username or "an anonymous user"
    if not name:
        raise MappingError(f"the jobs of {who} must run as their real user, but real_system_username "
                           f"{setting or 'user_email'} gives no Unix user name")
    if not USER_NAME.match(name):
        raise MappingError(f"the jobs of {who} would run as {name!r}, which is not a Unix user name")
    return name


def resources(params: Mapping[str, Any], env: Iterable[Mapping[str, Any]] = ()) -> Resources:
    """Cores, memory and walltime from a destination's params, then from its `env:` entries
    (GALAXY_SLOTS, GALAXY_MEMORY_MB), as Galaxy's own runners read them."""
    values = dict(_env_values(env))
    values.update({k: v for k, v in params.items() if v not in (None, "")})
    cores = _first(values, CORES_PARAMS, _whole)
    memory_mb = _first(values, MEMORY_MB_PARAMS, _whole)
    if memory_mb is None:
        memory_gb = _first(values, MEMORY_GB_PARAMS, _number)
        memory_mb = max(1, round(memory_gb * 1024)) if memory_gb is not None else None
    walltime_s = _first(values, WALLTIME_PARAMS, walltime_seconds)
    gpus = _first(values, GPUS_PARAMS, _count)
    native = _first(values, NATIVE_PARAMS, lambda v: str(v).strip())
    return Resources(cores=cores or 1, memory_mb=memory_mb, walltime_s=walltime_s, gpus=gpus or None,
                     native_specification=native or None)


def walltime(job: GalaxyJob) -> tuple[int | None, str]:
    """The walltime galaxy-tasks is asked to keep: the least of the destination's, Galaxy's
    global `walltime` limit and the tool's time limit; and the runner state reaching it is in
    Galaxy's words, as its own runners report it (a destination's: walltime_reached, the
    global one: global_walltime_reached, the tool's: tool_timelimit_reached)."""
    asked = resources(job.params, job.env).walltime_s
    bounds = [(s, state) for s, state in ((asked, "walltime_reached"),
                                          (job.limits.walltime_s, "global_walltime_reached"),
                                          (job.limits.tool_timelimit_s, "tool_timelimit_reached")) if s]
    if not bounds:
        return None, "walltime_reached"
    return min(bounds, key=lambda bound: bound[0])


def walltime_seconds(value: Any) -> int:
    """Seconds from a number or from `[[D-]HH:]MM:SS` (the DRM form: 1-12:00:00, 04:00:00)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _positive(int(value))
    text = str(value).strip()
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [int(p) for p in text.split(":")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(value)
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return _positive(days * 86400 + seconds)


def command(job: GalaxyJob) -> str:
    """Runs Galaxy's job script with its stdout and stderr where Galaxy's finish_job reads
    them (galaxy_<id>.o/.e). The script writes the tool's exit code to galaxy_<id>.ec and
    itself ends with the status of its last metrics line; the command exits with the
    tool's code, so galaxy-tasks records what the tool did."""
    q = shlex.quote
    ec = q(job.exit_code_file)
    return (f"{q(job.job_file)} > {q(job.stdout_file)} 2> {q(job.stderr_file)}; rc=$?; "
            f"if [ -s {ec} ] && read code < {ec}; then rc=$code; fi; exit \"$rc\"")


def to_spec(job: GalaxyJob, *, environment: Mapping[str, str] | None = None,
            events_queue: str | None = None) -> dict[str, Any]:
    """The job spec for `galaxy_tasks.submit_job`. `events_queue` asks galaxy-tasks to
    publish the job's state changes there (the job-event contract)."""
    needs = resources(job.params, job.env)
    walltime_s, _ = walltime(job)
    spec: dict[str, Any] = {
        "id": task_job_id(job.server_name, job.job_id, job.attempt),
        "tool_id": job.tool_id[:MAX_TEXT],
        "tool_version": job.tool_version[:TOOL_VERSION_LIMIT] if job.tool_version else None,
        "user": job.user[:MAX_TEXT] if job.user else None,
        "command": command(job),
        "cores": needs.cores,
        "memory_mb": needs.memory_mb,
        "walltime_s": walltime_s,
        "output_size_bytes": job.limits.output_size_bytes,
        "gpus": needs.gpus,
        "native_specification": needs.native_specification,
        "destination": _destination(job.params),
        "environment": dict(environment or {}),
        "run_as": job.run_as,
        "handover_dir": job.handover_dir if job.run_as else None,
    }
    if events_queue:
        spec["events"] = {"queue": events_queue, "client_id": job.server_name[:MAX_TEXT]}
    spec.update(staged_files(job))
    return {k: v for k, v in spec.items() if v is not None}


def staged_files(job: GalaxyJob) -> dict[str, list[str]]:
    """The job's files as a destination without a shared filesystem stages them: Galaxy's
    job directory, the inputs and the tool's files go in; the job directory and the outputs
    come home; the job script and Galaxy's files that name paths are rewritten to name the
    staged copies. Declared for every job (only galaxy-tasks' routing knows where it runs);
    none if they pass the spec's bounds, and such a job cannot run on a staging destination."""
    if not job.working_directory:
        return {}
    files = {
        "inputs": _unique([job.working_directory, *job.input_files, *job.tool_files]),
        "returns": _unique([job.working_directory, *job.output_files]),
        "rewrite": _unique([job.job_file, *job.config_files]),
    }
    if any(len(paths) > MAX_PATHS or sum(map(len, paths)) > MAX_PATHS_TOTAL for paths in files.values()):
        return {}
    return files


def tool_files(tool_dir: str | None, required: Iterable[str] | None, texts: Iterable[str]) -> list[str]:
    """The tool's files a job reads: those its `required_files` name, else (a tool that
    names none) its whole directory if the job's scripts mention it (Pulsar's rule too)."""
    if not tool_dir:
        return []
    if required is not None:
        return [posixpath.normpath(posixpath.join(tool_dir, path)) for path in required]
    return [tool_dir] if any(tool_dir in text for text in texts) else []


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(posixpath.normpath(path) for path in paths if path and posixpath.isabs(path)))


def _destination(params: Mapping[str, Any]) -> str | None:
    value = params.get(DESTINATION_PARAM)
    return str(value) if value not in (None, "") else None


def _env_values(env: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, Any]]:
    for entry in env:
        name, value = entry.get("name"), entry.get("value")
        if name and value not in (None, "") and not entry.get("execute") and not entry.get("file"):
            yield str(name), value


def _first(values: Mapping[str, Any], names: tuple[str, ...], convert: Any) -> Any:
    for name in names:
        if name in values:
            try:
                return convert(values[name])
            except (TypeError, ValueError):
                raise MappingError(f"destination param {name}={values[name]!r} is not valid") from None
    return None


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    if number != int(number):
        raise ValueError(value)
    return _positive(int(number))


def _count(value: Any) -> int:
    """A whole number of at least 0 (TPV writes `gpus: 0` for none)."""
    return 0 if str(value).strip() == "0" else _whole(value)


def _number(value: Any) -> float:
    number = float(value)
    if isinstance(value, bool) or number <= 0:
        raise ValueError(value)
    return number


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(value)
    return value
