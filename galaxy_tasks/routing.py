"""Destinations and routing rules from the job_conf YAML.

A destination names a runner, the queue its workers consume, the runner's parameters and
the largest job it accepts. Rules send a job to a destination by tool id (exact or glob)
and resource needs; the first rule that matches wins, then the default. The seeds' runner
URLs (`local:///`, `drmaa://-l h_rt=1:00/`) are accepted wherever a destination is.

Everything is checked when the file loads, each runner's params against the types its class
declares, and an error names the file, the line and the key.

`job_conf_model()` describes the file as pydantic models (one destination model per runner,
its params' model generated from the runner's Params dataclass): `galaxy-tasks schema
job-conf` prints their JSON Schema. The params are checked by those models; the rest of the
file by `parse` below, which also resolves what a schema cannot (a rule's destination must
exist), and tests/unit/test_schemas.py keeps the two in step.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from galaxy_tasks import yamlconf
from galaxy_tasks.errors import SpecError
from galaxy_tasks.policies import (
    DestinationLimitModel,
    DestinationPolicy,
    LimitModel,
    Limits,
    ResubmitModel,
    parse_destination_policy,
    parse_limits,
)
from galaxy_tasks.runners import REGISTRY, runner_class
from galaxy_tasks.runners import params as runner_params
from galaxy_tasks.runners.base import NoParams, Runner
from galaxy_tasks.spec import ENV_NAME, JobSpec
from galaxy_tasks.yamlconf import Where

_DESTINATION_KEYS = {"runner", "url", "queue", "params", "env", "max_cores", "max_memory_mb", "max_walltime_s",
                     "native_specification", "tags", "resubmit", "limits"}
_RULE_KEYS = {"destination", "tool", "tools", "min_cores", "min_memory_mb", "user", "users"}


@dataclass(frozen=True)
class Destination:
    name: str
    runner: str
    queue: str
    params: Any = field(default_factory=NoParams)
    env: Mapping[str, str] = field(default_factory=dict)
    max_cores: int | None = None
    max_memory_mb: int | None = None
    max_walltime_s: int | None = None
    policy: DestinationPolicy = field(default_factory=DestinationPolicy)

    @property
    def runner_class(self) -> type[Runner]:
        return runner_class(self.runner)

    @property
    def slots(self) -> int | None:
        """Jobs of this destination that may run at once on a host, if its runner limits it."""
        return self.runner_class.slots(self.params)

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

    def describe(self) -> str:
        parts = [f"tool in {list(self.tools)}" if self.tools else "",
                 f"user in {list(self.users)}" if self.users else "",
                 f"cores >= {self.min_cores}" if self.min_cores else "",
                 f"memory_mb >= {self.min_memory_mb}" if self.min_memory_mb else ""]
        return " and ".join(p for p in parts if p) or "every job"

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
    limits: Limits = field(default_factory=Limits)

    def limit_keys(self, user: str | None, destination: str) -> dict[str, int]:
        """The concurrency limits a job of `user` on `destination` counts under."""
        spec = self.destinations.get(destination)
        return self.limits.keys(user, destination, spec.policy.tags if spec else ())

    def walltime_s(self, destination: str, asked: int | None) -> int | None:
        """The walltime a job gets: what it asked for, within the destination's and the
        global `walltime` limits (the limit itself when it asked for none)."""
        spec = self.destinations.get(destination)
        bounds = [b for b in (asked, spec.policy.walltime_s if spec else None, self.limits.walltime_s) if b]
        return min(bounds) if bounds else None

    def global_walltime_binds(self, destination: str, asked: int | None) -> bool:
        """Whether the global `walltime` limit, not the job's or its destination's own, is
        the walltime it got: reaching it is Galaxy's global_walltime_reached, which is never
        resubmitted (another destination would not give more)."""
        spec = self.destinations.get(destination)
        others = [b for b in (asked, spec.policy.walltime_s if spec else None) if b]
        return self.limits.walltime_s is not None and (not others or self.limits.walltime_s < min(others))

    def output_size_bytes(self, destination: str) -> int | None:
        spec = self.destinations.get(destination)
        bounds = [b for b in (spec.policy.output_size_bytes if spec else None, self.limits.output_size_bytes) if b]
        return min(bounds) if bounds else None

    def route(self, spec: JobSpec) -> Destination:
        """The destination for a job, or a SpecError naming why there is none."""
        return self.explain(spec)[0]

    def explain(self, spec: JobSpec) -> tuple[Destination, str]:
        """The destination for a job and why: the spec named it, which rule matched, or the default."""
        if spec.destination is not None:
            if spec.destination not in self.destinations:
                known = ", ".join(sorted(self.destinations))
                raise SpecError("destination", f"unknown destination {spec.destination!r} (known: {known})")
            chosen, why = self.destinations[spec.destination], "the job spec names it"
        else:
            index = next((i for i, r in enumerate(self.rules) if r.matches(spec)), None)
            if index is None:
                chosen, why = self.destinations[self.default], "no rule matched: the default"
            else:
                chosen, why = self.destinations[self.rules[index].destination], f"rules[{index}] matched: " \
                    f"{self.rules[index].describe()}"
        refusal = chosen.refuse_reason(spec)
        if refusal is not None:
            raise refusal
        return chosen, why

    @property
    def queues(self) -> list[str]:
        return sorted({d.queue for d in self.destinations.values()})

    @functools.cached_property
    def limited(self) -> frozenset[str]:
        """Destinations with job slots: the end of one of their jobs wakes the next waiting one."""
        return frozenset(name for name, d in self.destinations.items() if d.slots is not None)


def default_routing() -> Routing:
    local = Destination("local", "local", "local", runner_params.load(runner_class("local").Params, {}),
                        max_cores=os.cpu_count() or 1)
    return Routing({"local": local}, (), "local")


def load(path: Path | None) -> Routing:
    if path is None:
        return default_routing()
    return parse(yamlconf.read(path), str(path))


def parse(data: Any, where: str = "job_conf") -> Routing:
    top = Where(where, line=getattr(data, "line", None))
    if not isinstance(data, Mapping):
        raise top.error("must be a mapping with 'destinations'")
    for key in data:
        if key not in ("destinations", "rules", "default", "limits"):
            raise top.unknown(data, key)
    raw = data.get("destinations")
    if not isinstance(raw, Mapping) or not raw:
        raise top.key(data, "destinations").error("'destinations' must map names to destinations")
    places = top.key(data, "destinations")
    names = {str(name) for name in raw}
    destinations = {str(name): _destination(str(name), value, places.key(raw, name), names)
                    for name, value in raw.items()}
    rules_data = data.get("rules") or []
    if not isinstance(rules_data, list):
        raise top.key(data, "rules").error("must be a list of rules")
    rules = tuple(_rule(item, Where(where, f"rules[{index}]", getattr(item, "line", None)), destinations)
                  for index, item in enumerate(rules_data))
    default = data.get("default", next(iter(destinations)))
    default = _destination_ref(default, top.key(data, "default"), destinations)
    limits = parse_limits(data.get("limits"), top.key(data, "limits"), destinations)
    return Routing(destinations, rules, default, limits)


def parse_url(url: str, name: str | None = None, where: Where | None = None) -> Destination:
    """`local:///` or `drmaa://<native specification>/` as a destination."""
    where = where or Where("runner URL")
    runner, raw = _url_params(url, where)
    return Destination(name or url, runner, runner, runner_params.load(runner_class(runner).Params, raw, where))


def _url_params(url: str, where: Where) -> tuple[str, dict[str, Any]]:
    """A runner URL's runner and the params its text stands for."""
    runner, sep, rest = url.partition("://")
    if not sep or runner not in REGISTRY:
        raise where.error(f"runner URL {url!r} must start with one of "
                          f"{', '.join(r + '://' for r in REGISTRY)}")
    try:
        return runner, runner_class(runner).url_params(rest[:-1] if rest.endswith("/") else rest)
    except ValueError as exc:
        raise where.error(str(exc)) from None


def _destination(name: str, value: Any, here: Where, names: set[str]) -> Destination:
    if isinstance(value, str):
        return parse_url(value, name, here)
    if not isinstance(value, Mapping):
        raise here.error("must be a runner URL or a mapping")
    for key in value:
        if key not in _DESTINATION_KEYS:
            raise here.unknown(value, key)
    raw: dict[str, Any] = {}
    runner = value.get("runner")
    if "url" in value:
        url_runner, raw = _url_params(str(value["url"]), here.key(value, "url"))
        runner = runner or url_runner
    if runner not in REGISTRY:
        raise here.key(value, "runner").error(f"runner must be one of {', '.join(REGISTRY)}, not {runner!r}")
    cls = runner_class(runner)
    given = value.get("params")
    if given is not None and not isinstance(given, Mapping):
        raise here.key(value, "params").error("must be a mapping")
    params_where = here.key(value, "params")
    if "native_specification" in value:
        raw["native_specification"] = value["native_specification"]
    merged: yamlconf.LineMap = yamlconf.LineMap({**raw, **(given or {})})
    merged.line = getattr(given, "line", None) or here.line
    merged.key_lines = dict(getattr(given, "key_lines", {}))
    params: Any = runner_params.load(cls.Params, merged, params_where)
    env = value.get("env") or {}
    env_where = here.key(value, "env")
    if not isinstance(env, Mapping):
        raise env_where.error("must be a mapping")
    for key, text in env.items():
        if not isinstance(key, str) or not ENV_NAME.match(key):
            raise env_where.error(f"{key!r} is not a valid environment variable name")
        if not isinstance(text, str):
            raise env_where.key(env, key).error("must be a string")
    default_queue = runner if name == runner else f"{runner}.{name}"
    queue = value.get("queue", default_queue)
    if not isinstance(queue, str) or not queue:
        raise here.key(value, "queue").error("must be a queue name")
    return Destination(
        name=name,
        runner=runner,
        queue=queue,
        params=params,
        env=dict(env),
        max_cores=_limit(value, "max_cores", here),
        max_memory_mb=_limit(value, "max_memory_mb", here),
        max_walltime_s=_limit(value, "max_walltime_s", here),
        policy=parse_destination_policy(value, here, names),
    )


def _rule(item: Any, here: Where, destinations: dict[str, Destination]) -> Rule:
    if not isinstance(item, Mapping) or "destination" not in item:
        raise here.error("must be a mapping with a 'destination'")
    for key in item:
        if key not in _RULE_KEYS:
            raise here.unknown(item, key)
    return Rule(
        destination=_destination_ref(item["destination"], here.key(item, "destination"), destinations),
        tools=_strings(item.get("tools", item.get("tool")), here.key(item, "tools" if "tools" in item else "tool",
                                                                     "tool")),
        min_cores=_limit(item, "min_cores", here),
        min_memory_mb=_limit(item, "min_memory_mb", here),
        users=_strings(item.get("users", item.get("user")), here.key(item, "users" if "users" in item else "user",
                                                                     "user")),
    )


def _destination_ref(value: Any, here: Where, destinations: dict[str, Destination]) -> str:
    """A destination by name, or a runner URL that becomes a destination of its own."""
    if not isinstance(value, str):
        raise here.error("must be a destination name or a runner URL")
    if value in destinations:
        return value
    if "://" in value:
        destinations.setdefault(value, parse_url(value, where=here))
        return value
    raise here.error(f"unknown destination {value!r}")


def _strings(value: Any, here: Where) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise here.error("must be a string or a list of strings")
    return tuple(items)


def _limit(data: Mapping[str, Any], key: str, here: Where) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise here.key(data, key).error(f"must be a whole number of at least 1, not {value!r}")
    return value


# -- the published description ---------------------------------------------------------------

_Whole = Annotated[int, Field(strict=True, ge=1)]
_Strings = Annotated[str, Field(strict=True)] | list[Annotated[str, Field(strict=True)]]
_EnvName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def url_pattern(runner: str) -> str:
    """The runner URLs of `runner` as a JSON Schema pattern: a runner whose URL takes no
    options (`local:///`) and one whose URL's text is its native specification."""
    cls = runner_class(runner)
    takes_text = any("url_params" in vars(k) for k in cls.__mro__[:cls.__mro__.index(Runner)])
    return f"^{runner}://.*$" if takes_text else f"^{runner}://\\s*/?$"


def _destination_model(runner: str) -> type[BaseModel]:
    cls = runner_class(runner)
    fields: dict[str, Any] = {
        "runner": (Literal[runner] | None, Field(None, description="the runner (or give `url`)")),
        "url": (Annotated[str, StringConstraints(pattern=url_pattern(runner))] | None,
                Field(None, description="a runner URL: the runner, and the params its text stands for")),
        "queue": (Annotated[str, StringConstraints(strict=True, min_length=1)] | None,
                  Field(None, description="the queue its workers consume (default: the runner's name, or "
                                          "<runner>.<destination>)")),
        "params": (runner_params.model(cls.Params) | None, Field(None, description=f"the {runner} runner's params")),
        "env": (Annotated[dict[_EnvName, Annotated[str, Field(strict=True)]],
                          Field(json_schema_extra={"additionalProperties": False})] | None,
                Field(None, description="added to the environment of the destination's jobs")),
        "max_cores": (_Whole | None, Field(None, description="the most cores a job may ask for")),
        "max_memory_mb": (_Whole | None, Field(None, description="the most memory (MB) a job may ask for")),
        "max_walltime_s": (_Whole | None, Field(None, description="the longest walltime a job may ask for")),
    }
    fields.update(
        tags=(_Strings | None, Field(None, description="tags a limit's `tag:` names (Galaxy's destination tags)")),
        resubmit=(list[ResubmitModel] | None,
                  Field(None, description="resubmit rules, in order: the first that matches a failed job")),
        limits=(list[DestinationLimitModel] | None,
                Field(None, description="this destination's own walltime and output_size")),
    )
    if "native_specification" in {f.name for f in dataclasses.fields(cls.Params)}:
        fields["native_specification"] = (Annotated[str, Field(strict=True)] | None,
                                          Field(None, description="the same as params.native_specification"))
    config = ConfigDict(extra="forbid", title=f"{runner.capitalize()}Destination", json_schema_extra={
        "anyOf": [{"required": ["runner"]}, {"required": ["url"]}]})
    model: type[BaseModel] = create_model(f"{runner.capitalize()}Destination", __config__=config, **fields)
    return model


class RuleModel(BaseModel):
    """A routing rule: every condition given must hold; the first rule that matches wins."""

    model_config = ConfigDict(extra="forbid", title="Rule")

    destination: Annotated[str, Field(strict=True)] = Field(description="a destination's name, or a runner URL")
    tool: _Strings | None = Field(None, description="tool ids or globs (`bwa*`); `tools` is the same")
    tools: _Strings | None = Field(None, description="the same as `tool`")
    user: _Strings | None = Field(None, description="users; `users` is the same")
    users: _Strings | None = Field(None, description="the same as `user`")
    min_cores: _Whole | None = Field(None, description="jobs asking for at least this many cores")
    min_memory_mb: _Whole | None = Field(None, description="jobs asking for at least this much memory (MB)")


@functools.cache
def job_conf_model() -> type[BaseModel]:
    """The job_conf as a pydantic model (its JSON Schema is the published one)."""
    urls = "|".join(url_pattern(runner)[1:-1] for runner in REGISTRY)
    url = Annotated[str, StringConstraints(pattern=f"^(?:{urls})$"), Field(title="RunnerURL")]
    destination: Any = url
    for runner in REGISTRY:
        destination = destination | _destination_model(runner)
    config = ConfigDict(extra="forbid", title="JobConf")
    model: type[BaseModel] = create_model(
        "JobConf", __config__=config,
        destinations=(Annotated[dict[str, destination], Field(min_length=1)],
                      Field(description="destinations by name: a runner URL, or a mapping")),
        rules=(list[RuleModel] | None, Field(None, description="routing rules, in order")),
        default=(Annotated[str, Field(strict=True)] | None,
                 Field(None, description="where a job no rule matches goes (a destination or a runner URL; "
                                         "default: the first destination)")),
        limits=(list[LimitModel] | None,
                Field(None, description="Galaxy's limits: concurrency per user, destination or tag; walltime; "
                                        "output_size")),
    )
    return model


__all__ = ["Destination", "Routing", "Rule", "default_routing", "job_conf_model", "load", "parse", "parse_url"]
