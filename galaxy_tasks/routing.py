"""Destinations and routing rules from the job_conf YAML.

A destination names a runner, the queue its workers consume, the runner's parameters and
the largest job it accepts. Rules send a job to a destination by tool id (exact or glob)
and resource needs; the first rule that matches wins, then the default. The seeds' runner
URLs (`local:///`, `drmaa://-l h_rt=1:00/`) are accepted wherever a destination is.
"""
from __future__ import annotations

import fnmatch
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from galaxy_tasks.spec import ENV_NAME, JobSpec, SpecError

RUNNERS = ("local", "drmaa", "mesos")


class ConfigError(ValueError):
    """The job_conf is wrong; the message names the key."""


@dataclass(frozen=True)
class Destination:
    name: str
    runner: str
    queue: str
    params: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    max_cores: int | None = None
    max_memory_mb: int | None = None
    max_walltime_s: int | None = None

    def refuse_reason(self, spec: JobSpec) -> SpecError | None:
        """Why this destination cannot take the job, naming the field, or None."""
        for name, needed, limit in (
            ("cores", spec.cores, self.max_cores),
            ("memory_mb", spec.memory_mb, self.max_memory_mb),
            ("walltime_s", spec.walltime_s, self.max_walltime_s),
        ):
            if needed is not None and limit is not None and needed > limit:
                return SpecError(
                    name, f"asks for {needed}, more than destination {self.name!r} allows ({limit})"
                )
        return None


@dataclass(frozen=True)
class Rule:
    destination: str
    tools: tuple[str, ...] = ()
    min_cores: int | None = None
    min_memory_mb: int | None = None
    users: tuple[str, ...] = ()

    def matches(self, spec: JobSpec) -> bool:
        if self.tools and not any(fnmatch.fnmatchcase(spec.tool_id, p) for p in self.tools):
            return False
        if self.users and spec.user not in self.users:
            return False
        if self.min_cores is not None and spec.cores < self.min_cores:
            return False
        if self.min_memory_mb is not None and (spec.memory_mb or 0) < self.min_memory_mb:
            return False
        return True


@dataclass(frozen=True)
class Routing:
    destinations: Mapping[str, Destination]
    rules: tuple[Rule, ...]
    default: str

    def route(self, spec: JobSpec) -> Destination:
        """The destination for a job, or a SpecError naming why there is none."""
        if spec.destination is not None:
            if spec.destination not in self.destinations:
                known = ", ".join(sorted(self.destinations))
                raise SpecError("destination", f"unknown destination {spec.destination!r} (known: {known})")
            chosen = self.destinations[spec.destination]
        else:
            name = next((r.destination for r in self.rules if r.matches(spec)), self.default)
            chosen = self.destinations[name]
        refusal = chosen.refuse_reason(spec)
        if refusal is not None:
            raise refusal
        return chosen

    @property
    def queues(self) -> list[str]:
        return sorted({d.queue for d in self.destinations.values()})

    @functools.cached_property
    def limited(self) -> frozenset[str]:
        """Destinations with job slots (`params.max_jobs`): the end of one of their jobs
        wakes the next waiting one."""
        return frozenset(name for name, d in self.destinations.items() if d.params.get("max_jobs"))


def default_routing() -> Routing:
    local = Destination("local", "local", "local", max_cores=os.cpu_count() or 1)
    return Routing({"local": local}, (), "local")


def load(path: Path | None) -> Routing:
    if path is None:
        return default_routing()
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise ConfigError(f"job_conf {exc}") from None
    return parse(data, str(path))


def read_yaml(path: Path) -> Any:
    """A YAML file's data, or a ValueError that names the file and what is wrong."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None


def parse(data: Any, where: str = "job_conf") -> Routing:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a mapping with 'destinations'")
    unknown = set(data) - {"destinations", "rules", "default"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    raw = data.get("destinations")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: 'destinations' must map names to destinations")
    destinations = {str(name): _destination(str(name), value, where) for name, value in raw.items()}
    rules = []
    for index, item in enumerate(data.get("rules") or []):
        rule = _rule(item, f"{where}: rules[{index}]", destinations)
        rules.append(rule)
    default = data.get("default", next(iter(destinations)))
    default = _destination_ref(default, f"{where}: default", destinations)
    return Routing(destinations, tuple(rules), default)


def parse_url(url: str, name: str | None = None) -> Destination:
    """`local:///` or `drmaa://<native specification>/` as a destination."""
    runner, sep, rest = url.partition("://")
    if not sep or runner not in RUNNERS:
        raise ConfigError(f"runner URL {url!r} must start with one of {', '.join(r + '://' for r in RUNNERS)}")
    native = rest[:-1] if rest.endswith("/") else rest
    if runner == "drmaa" and (native + "/").startswith("native/"):
        native = native[len("native/"):]
    params = {"native_specification": native.strip()} if native.strip() else {}
    return Destination(name or url, runner, runner, params)


def _destination(name: str, value: Any, where: str) -> Destination:
    here = f"{where}: destinations.{name}"
    try:
        return _destination_fields(name, value, here)
    except ConfigError as exc:
        if here in str(exc):
            raise
        raise ConfigError(f"{here}: {exc}") from None


def _destination_fields(name: str, value: Any, here: str) -> Destination:
    if isinstance(value, str):
        return parse_url(value, name)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{here}: must be a runner URL or a mapping")
    allowed = {"runner", "url", "queue", "params", "env", "max_cores", "max_memory_mb", "max_walltime_s",
               "native_specification"}
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{here}: unknown key {sorted(unknown)[0]!r}")
    base = parse_url(value["url"], name) if "url" in value else None
    runner = value.get("runner", base.runner if base else None)
    if runner not in RUNNERS:
        raise ConfigError(f"{here}: runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    params = dict(base.params if base else {})
    params.update(_mapping(value.get("params"), f"{here}.params"))
    if "native_specification" in value:
        params["native_specification"] = str(value["native_specification"])
    if "max_jobs" in params:
        jobs = params["max_jobs"]
        if runner != "local":
            raise ConfigError(f"{here}.params.max_jobs: only the local runner has job slots "
                              f"(a {runner} destination's scheduler queues its jobs)")
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ConfigError(f"{here}.params.max_jobs: must be a whole number of at least 1, not {jobs!r}")
    env = _mapping(value.get("env"), f"{here}.env")
    for key, text in env.items():
        if not isinstance(key, str) or not ENV_NAME.match(key):
            raise ConfigError(f"{here}.env: {key!r} is not a valid environment variable name")
        if not isinstance(text, str):
            raise ConfigError(f"{here}.env.{key}: must be a string")
    default_queue = runner if name == runner else f"{runner}.{name}"
    return Destination(
        name=name,
        runner=runner,
        queue=str(value.get("queue", default_queue)),
        params=params,
        env=env,
        max_cores=_limit(value, "max_cores", here),
        max_memory_mb=_limit(value, "max_memory_mb", here),
        max_walltime_s=_limit(value, "max_walltime_s", here),
    )


def _rule(item: Any, here: str, destinations: dict[str, Destination]) -> Rule:
    if not isinstance(item, Mapping) or "destination" not in item:
        raise ConfigError(f"{here}: must be a mapping with a 'destination'")
    unknown = set(item) - {"destination", "tool", "tools", "min_cores", "min_memory_mb", "user", "users"}
    if unknown:
        raise ConfigError(f"{here}: unknown key {sorted(unknown)[0]!r}")
    return Rule(
        destination=_destination_ref(item["destination"], f"{here}.destination", destinations),
        tools=_strings(item.get("tools", item.get("tool")), f"{here}.tool"),
        min_cores=_limit(item, "min_cores", here),
        min_memory_mb=_limit(item, "min_memory_mb", here),
        users=_strings(item.get("users", item.get("user")), f"{here}.user"),
    )


def _destination_ref(value: Any, here: str, destinations: dict[str, Destination]) -> str:
    """A destination by name, or a runner URL that becomes a destination of its own."""
    if not isinstance(value, str):
        raise ConfigError(f"{here}: must be a destination name or a runner URL")
    if value in destinations:
        return value
    if "://" in value:
        destinations.setdefault(value, parse_url(value))
        return value
    raise ConfigError(f"{here}: unknown destination {value!r}")


def _mapping(value: Any, here: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{here}: must be a mapping")
    return dict(value)


def _strings(value: Any, here: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{here}: must be a string or a list of strings")
    return tuple(items)


def _limit(data: Mapping, key: str, here: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{here}.{key}: must be a whole number of at least 1, not {value!r}")
    return value
