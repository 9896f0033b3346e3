"""Destinations and routing rules from the job_conf YAML.

A destination names a runner, the queue its workers consume, the runner's parameters and
the largest job it accepts. Rules send a job to a destination by tool id (exact or glob)
and resource needs; the first rule that matches wins, then the default. The seeds' runner
URLs (`local:///`, `drmaa://-l h_rt=1:00/`) are accepted wherever a destination is.

The grammar is declared once, as pydantic models (`job_conf_model()`: one destination model
per runner, its params' model generated from the runner's Params dataclass). They check a
loaded file and are its JSON Schema (`galaxy-tasks schema job-conf`); `parse` then builds
the routing from the checked models and checks what a model cannot say (a rule's
destination must exist, each destination's queue is its own). Everything is checked when
the file loads, and an error names the file, the line and the key.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, NamedTuple, Sequence

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    create_model,
    model_validator,
)

from galaxy_tasks import confmodels, native, yamlconf
from galaxy_tasks.clients import ClientModel, Clients, clients_from
from galaxy_tasks.confmodels import refuse, says, shown
from galaxy_tasks.errors import SpecError
from galaxy_tasks.fairshare import ShareModel, Shares, shares_from
from galaxy_tasks.policies import (
    DestinationLimitModel,
    DestinationPolicy,
    LimitModel,
    Limits,
    ResubmitModel,
    limits_from,
    policy_from,
)
from galaxy_tasks.runners import REGISTRY, runner_class
from galaxy_tasks.runners import params as runner_params
from galaxy_tasks.runners.base import NoParams, Runner
from galaxy_tasks.spec import JobSpec
from galaxy_tasks.staging.settings import StagingSettings
from galaxy_tasks.yamlconf import Where


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
    #: the most GPUs a job may ask for (None: the destination gives none)
    max_gpus: int | None = None
    #: the scheduler options a job may set itself (its `native_specification`), by name
    allow_native: frozenset[str] = frozenset()
    policy: DestinationPolicy = field(default_factory=DestinationPolicy)
    #: how files travel for a destination that shares no filesystem with the submitter
    #: (None: it shares one)
    staging: StagingSettings | None = None

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
        if spec.gpus and self.max_gpus is None:
            return SpecError("gpus", f"asks for {spec.gpus}, but destination {self.name!r} gives no GPUs (no max_gpus)")
        if spec.gpus and self.max_gpus is not None and spec.gpus > self.max_gpus:
            return SpecError("gpus", f"asks for {spec.gpus}, more than destination {self.name!r} allows "
                                     f"({self.max_gpus})")
        if spec.native_specification:
            why = native.refusal(spec.native_specification, self.runner_class.native_style, self.allow_native,
                                 self.name)
            if why is not None:
                return SpecError("native_specification", why)
        return None


@dataclass(frozen=True)
class Rule:
    destination: str
    tools: tuple[str, ...] = ()
    min_cores: int | None = None
    min_memory_mb: int | None = None
    users: tuple[str, ...] = ()
    #: several destinations: the job goes to the one with the shortest expected wait
    alternatives: tuple[str, ...] = ()

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
class Load:
    """A destination's live figures, which a rule with several destinations chooses on."""

    running: int
    waiting: int
    slots: int | None
    #: the mean run time of its last finished jobs (None: none has ended yet)
    mean_run_s: float | None

    @property
    def expected_wait_s(self) -> float:
        """Seconds until a job sent there now would start. With slots: none while more are
        free than jobs wait, else the jobs in front in rounds of its slots, each the mean run
        time. Without (a batch scheduler keeps its own line): the jobs in front divided among
        those running. Before any run has ended, a run counts as 1 s."""
        mean = self.mean_run_s if self.mean_run_s is not None else 1.0
        if self.slots is None:
            return self.waiting * mean / max(1, self.running)
        free = max(0, self.slots - self.running)
        if self.waiting < free:
            return 0.0
        return math.ceil((self.waiting - free + 1) / self.slots) * mean

    def describe(self) -> str:
        slots = f"{self.slots} slots" if self.slots is not None else "no slots"
        mean = f"mean run {self.mean_run_s:.1f} s" if self.mean_run_s is not None else "no run ended yet"
        return (f"{self.running} running, {self.waiting} waiting, {slots}, {mean}: expected wait "
                f"{self.expected_wait_s:.1f} s")


class Routed(NamedTuple):
    """Where a job goes, why, and the figures a rule with several destinations chose on."""

    destination: Destination
    why: str
    loads: Mapping[str, Load]


@dataclass(frozen=True)
class Routing:
    destinations: Mapping[str, Destination]
    rules: tuple[Rule, ...]
    default: str
    limits: Limits = field(default_factory=Limits)
    shares: Shares = field(default_factory=Shares)
    clients: Clients = field(default_factory=Clients)

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

    def route(self, spec: JobSpec, load: Callable[[Destination], Load] | None = None) -> Destination:
        """The destination for a job, or a SpecError naming why there is none."""
        return self.explain(spec, load).destination

    def explain(self, spec: JobSpec, load: Callable[[Destination], Load] | None = None) -> Routed:
        """The destination for a job and why: the spec named it, which rule matched, or the
        default. A rule with several destinations takes the one with the shortest expected
        wait by `load`'s live figures (without them, the first that accepts the job)."""
        if spec.destination is None:
            index = next((i for i, r in enumerate(self.rules) if r.matches(spec)), None)
            if index is not None and self.rules[index].alternatives:
                return self._least_wait(spec, index, load)
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
        return Routed(chosen, why, {})

    def _least_wait(self, spec: JobSpec, index: int, load: Callable[[Destination], Load] | None) -> Routed:
        rule = self.rules[index]
        candidates = [self.destinations[name] for name in rule.alternatives]
        fit = [d for d in candidates if d.refuse_reason(spec) is None]
        if not fit:
            raise candidates[0].refuse_reason(spec) or SpecError("destination", "no destination of the rule fits")
        matched = f"rules[{index}] matched: {rule.describe()}"
        if load is None:
            return Routed(fit[0], f"{matched}; the first of {', '.join(rule.alternatives)} that fits (no live "
                                  "figures)", {})
        loads = {d.name: load(d) for d in fit}
        chosen = min(fit, key=lambda d: loads[d.name].expected_wait_s)  # ties: the rule's order
        figures = "; ".join(f"{name}: {figure.describe()}" for name, figure in loads.items())
        return Routed(chosen, f"{matched}; the shortest expected wait of {len(fit)} ({figures})", loads)

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


#: the steps' queues (GALAXY_TASKS_STEPS_QUEUE, _ENDS_QUEUE) when the settings name no others
STEPS_QUEUES = ("galaxy_tasks", "galaxy_tasks.ends")
#: queue names of Celery's and kombu's own: a destination there would take messages that
#: are not its runner's (the default queue `celery`, the broadcast and reply queues)
RESERVED_QUEUE_PREFIXES = ("celery", "_kombu", "unacked")


def load(path: Path | None, steps_queues: Sequence[str] = STEPS_QUEUES) -> Routing:
    if path is None:
        return default_routing()
    return parse(yamlconf.read(path), str(path), steps_queues)


def parse(data: Any, where: str = "job_conf", steps_queues: Sequence[str] = STEPS_QUEUES) -> Routing:
    """A loaded job_conf, checked by its model (`job_conf_model`), then for what a model
    cannot say: the destinations that rules, limits and resubmit rules name, and queues."""
    top = Where.top(where, data)
    conf: Any = confmodels.validate(job_conf_model(), top)
    here = top.at("destinations")
    names = set(conf.destinations)
    destinations = {name: _destination(name, given, here.at(name), names) for name, given in conf.destinations.items()}
    _check_queues(destinations, here, steps_queues)
    rules = tuple(_rule(rule, top.at("rules", index), destinations) for index, rule in enumerate(conf.rules or ()))
    default = _destination_ref(next(iter(destinations)) if conf.default is None else conf.default, top.at("default"),
                               destinations)
    return Routing(destinations, rules, default, limits_from(conf.limits, top.at("limits"), destinations),
                   clients=clients_from(conf.clients, top.at("clients")),
                   shares=shares_from(conf.shares, top.at("shares")))


def _check_queues(destinations: Mapping[str, Destination], here: Where, steps_queues: Sequence[str]) -> None:
    """Each destination's queue is its own: not the steps' queue, not one of Celery's, not a
    host queue (`<queue>@<host>`, which a local destination's worker consumes for the kills
    and status checks of its host's jobs), and not another destination's (a worker takes a
    queue's messages whatever destination they are for)."""
    owners: dict[str, str] = {}
    for name, destination in destinations.items():
        where = here.at(name)
        queue = destination.queue
        if queue in steps_queues:
            raise where.error(f"queue {queue!r} is one of the steps' queues (GALAXY_TASKS_STEPS_QUEUE, _ENDS_QUEUE): "
                              "a destination needs a queue of its own")
        if queue.startswith(RESERVED_QUEUE_PREFIXES):
            raise where.error(f"queue {queue!r} is one of Celery's own names ({', '.join(RESERVED_QUEUE_PREFIXES)}...)")
        if "@" in queue:
            raise where.error(f"queue {queue!r} has '@', kept for the host queues (<queue>@<host>) of local workers")
        if queue in owners:
            raise where.error(f"queue {queue!r} is also destination {owners[queue]!r}'s: each destination needs a "
                              "queue of its own")
        owners[queue] = name


def parse_url(url: str, name: str | None = None, where: Where | None = None) -> Destination:
    """`local:///` or `drmaa://<native specification>/` as a destination."""
    where = where or Where("runner URL")
    runner, raw = _url_params(url, where)
    return Destination(name or url, runner, runner, runner_params.load(runner_class(runner).Params, raw, where))


def _runner_url(url: str) -> tuple[str, dict[str, Any]]:
    """A runner URL's runner and the params its text stands for; a ValueError says what is wrong."""
    runner, sep, rest = url.partition("://")
    if not sep or runner not in REGISTRY:
        raise ValueError(f"runner URL {url!r} must start with one of {', '.join(r + '://' for r in REGISTRY)}")
    return runner, runner_class(runner).url_params(rest[:-1] if rest.endswith("/") else rest)


def _url_params(url: str, where: Where) -> tuple[str, dict[str, Any]]:
    try:
        return _runner_url(url)
    except ValueError as exc:
        raise where.error(str(exc)) from None


def _destination(name: str, given: Any, here: Where, names: set[str]) -> Destination:
    """A destination from its checked model (or runner URL). Its runner's params are those of
    its `url`'s text (checked where it stands), then `native_specification`, then `params`."""
    if isinstance(given, str):
        return parse_url(given, name, here)
    raw: dict[str, Any] = {}
    runner: str = given.runner
    if given.url is not None:
        url_runner, raw = _url_params(given.url, here.at("url"))
        runner_params.load(runner_class(url_runner).Params, raw, here.at("url"))
        runner = runner or url_runner  # the model has one or the other
    if getattr(given, "native_specification", None) is not None:
        raw["native_specification"] = given.native_specification
    if given.params is not None:
        raw.update(given.params.model_dump(exclude_unset=True))
    params: Any = runner_params.load(runner_class(runner).Params, raw, here.at("params"))
    return Destination(
        name=name,
        runner=runner,
        queue=given.queue or (runner if name == runner else f"{runner}.{name}"),
        params=params,
        env=dict(given.env or {}),
        max_cores=given.max_cores,
        max_memory_mb=given.max_memory_mb,
        max_walltime_s=given.max_walltime_s,
        max_gpus=_max_gpus(given.max_gpus, here, runner_class(runner), params),
        allow_native=_allow_native(_strings(given.allow_native), here, runner_class(runner)),
        policy=policy_from(given, here, names),
        staging=_staging(given, here, runner),
    )


def _staging(given: Any, here: Where, runner: str) -> StagingSettings | None:
    """The staging settings of a destination that shares no filesystem with the submitter."""
    if given.shared_filesystem is not False:
        if given.staging is not None:
            raise here.at("staging").error("only a destination with `shared_filesystem: false` stages files")
        return None
    if given.staging is None:
        raise here.at("shared_filesystem").error("a destination without a shared filesystem needs a `staging:` "
                                                 "block (docs/staging.md)")
    if runner != "local":
        raise here.at("shared_filesystem").error(f"staging is not yet supported with the {runner} runner (local "
                                                 "only)")
    where = here.at("staging")
    settings = runner_params.load(StagingSettings, given.staging.model_dump(exclude_unset=True), where)
    if missing := settings.missing():
        raise where.error(f"needs {', '.join(missing)}")
    if misplaced := settings.misplaced():
        raise where.error(f"{', '.join(misplaced)} not used by `transfer: {settings.transfer}`")
    return settings


def _max_gpus(most: int | None, here: Where, cls: type[Runner], params: Any) -> int | None:
    if most is not None and not cls.gives_gpus(params):
        raise here.at("max_gpus").error(f"the {cls.name} runner cannot ask for GPUs with these params"
                                        + (" (set params.gpu_resource)" if cls.name == "drmaa" else ""))
    return most


def _allow_native(names: tuple[str, ...], here: Where, cls: type[Runner]) -> frozenset[str]:
    """The option names a job may set: each one its runner's scheduler leaves to jobs."""
    where = here.at("allow_native")
    if names and cls.native_style is None:
        raise where.error(f"the {cls.name} runner takes no scheduler options")
    for name in names:
        if not native.NAME.match(name):
            raise where.error(f"{name!r} must be an option's name without dashes (partition, account, gres, q, P)")
        if name in cls.native_reserved:
            raise where.error(f"a job may not set {name!r}: the {cls.name} runner sets it itself (or it is a "
                              "resource the job spec asks for: cores, memory_mb, walltime_s, gpus)")
    return frozenset(names)


def _rule(rule: RuleModel, here: Where, destinations: dict[str, Destination]) -> Rule:
    alternatives = tuple(_destination_ref(name, here.at("destinations", index), destinations)
                         for index, name in enumerate(rule.destinations or ()))
    return Rule(
        destination=alternatives[0] if alternatives else _destination_ref(str(rule.destination),
                                                                          here.at("destination"), destinations),
        tools=_strings(rule.tools if rule.tools is not None else rule.tool),
        min_cores=rule.min_cores,
        min_memory_mb=rule.min_memory_mb,
        users=_strings(rule.users if rule.users is not None else rule.user),
        alternatives=alternatives,
    )


def _destination_ref(name: str, here: Where, destinations: dict[str, Destination]) -> str:
    """A destination by name, or a runner URL that becomes a destination of its own."""
    if name in destinations:
        return name
    if "://" in name:
        destinations.setdefault(name, parse_url(name, where=here))
        return name
    raise here.error(f"unknown destination {name!r}")


def _strings(value: str | list[str] | None) -> tuple[str, ...]:
    return () if value is None else (value,) if isinstance(value, str) else tuple(value)


# -- the grammar -----------------------------------------------------------------------------

_Whole = Annotated[int, Field(strict=True, ge=1), says("must be a whole number of at least 1")]
_Strings = Annotated[Annotated[str, Field(strict=True)] | list[Annotated[str, Field(strict=True)]],
                     says("must be a string or a list of strings")]
_EnvName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
                     says("must be an environment variable name")]


def url_pattern(runner: str) -> str:
    """The runner URLs of `runner` as a JSON Schema pattern: a runner whose URL takes no
    options (`local:///`) and one whose URL's text is its native specification."""
    cls = runner_class(runner)
    takes_text = any("url_params" in vars(k) for k in cls.__mro__[:cls.__mro__.index(Runner)])
    return f"^{runner}://.*$" if takes_text else f"^{runner}://\\s*/?$"


@functools.cache
def _destination_model(runner: str) -> type[BaseModel]:
    cls = runner_class(runner)
    fields: dict[str, Any] = {
        "runner": (Literal[runner] | None, Field(None, description="the runner (or give `url`)")),
        "url": (Annotated[str, StringConstraints(pattern=url_pattern(runner)),
                          says(f"must be a {runner}:// URL")] | None,
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
        "max_gpus": (_Whole | None, Field(None, description="the most GPUs a job may ask for (none: no GPUs)")),
        "allow_native": (_Strings | None, Field(None, description="scheduler options a job's own "
                                                                  "native_specification may set, by name")),
        "shared_filesystem": (Annotated[bool, Field(strict=True)] | None,
                              Field(None, description="false: the worker sees none of the submitter's files, and "
                                                      "`staging` says how they travel (default true)")),
        "staging": (runner_params.model(StagingSettings) | None,
                    Field(None, description="how a job's files travel (docs/staging.md)")),
    }
    fields.update(
        tags=(_Strings | None, Field(None, description="tags a limit's `tag:` names (Galaxy's destination tags)")),
        resubmit=(list[ResubmitModel] | None,
                  Field(None, description="resubmit rules, in order: the first that matches a failed job")),
        limits=(list[DestinationLimitModel] | None,
                Field(None, description="this destination's own walltime and output_size")),
    )
    if "native_specification" in {f.name for f in dataclasses.fields(cls.Params)}:
        fields["native_specification"] = (runner_params.checked(cls.Params, "native_specification",
                                                                Annotated[str, Field(strict=True)]) | None,
                                          Field(None, description="the same as params.native_specification"))
    config = ConfigDict(extra="forbid", title=f"{runner.capitalize()}Destination", json_schema_extra={
        "anyOf": [{"required": ["runner"]}, {"required": ["url"]}]})
    model: type[BaseModel] = create_model(f"{runner.capitalize()}Destination", __config__=config, **fields)
    return model


class RuleModel(BaseModel):
    """A routing rule: every condition given must hold; the first rule that matches wins."""

    model_config = ConfigDict(extra="forbid", title="Rule", json_schema_extra={
        "oneOf": [{"required": ["destination"]}, {"required": ["destinations"]}]})

    destination: Annotated[str, Field(strict=True)] | None = Field(
        None, description="a destination's name, or a runner URL (or give `destinations`)")
    destinations: Annotated[list[Annotated[str, Field(strict=True)]], Field(min_length=2),
                            says("must be a list of at least two destinations")] | None = Field(
        None, description="several destinations: the job goes to the one with the shortest expected wait (its "
                          "waiting and running jobs, free slots and recent run times)")
    tool: _Strings | None = Field(None, description="tool ids or globs (`bwa*`); `tools` is the same")
    tools: _Strings | None = Field(None, description="the same as `tool`")
    user: _Strings | None = Field(None, description="users; `users` is the same")
    users: _Strings | None = Field(None, description="the same as `user`")
    min_cores: _Whole | None = Field(None, description="jobs asking for at least this many cores")
    min_memory_mb: _Whole | None = Field(None, description="jobs asking for at least this much memory (MB)")

    @model_validator(mode="after")
    def _one_destination(self) -> RuleModel:
        if (self.destination is None) == (self.destinations is None):
            raise refuse("must be a mapping with a 'destination' (or 'destinations': the one with the shortest "
                         "expected wait)")
        if self.destinations is not None and len(set(self.destinations)) != len(self.destinations):
            raise refuse("names a destination twice", "destinations")
        return self


def _runner_model(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A destination is checked as its runner's: a runner URL, or a mapping by the model of
    the runner its `runner` (or `url`) names, so that an error is that model's alone."""
    if isinstance(value, str):
        try:
            _runner_url(value)
        except ValueError as exc:
            raise refuse(str(exc)) from None
        return handler(value)
    if not isinstance(value, Mapping):
        raise refuse(f"must be a runner URL or a mapping, not {shown(value)}")
    runner, url = value.get("runner"), value.get("url")
    if runner is None and isinstance(url, str):
        try:
            runner = _runner_url(url)[0]
        except ValueError as exc:
            raise refuse(str(exc), "url") from None
    if not isinstance(runner, str) or runner not in REGISTRY:
        raise refuse(f"runner must be one of {', '.join(REGISTRY)}, not {shown(runner)}", "runner")
    return _destination_model(runner).model_validate(value)


@functools.cache
def job_conf_model() -> type[BaseModel]:
    """The job_conf as a pydantic model (its JSON Schema is the published one)."""
    urls = "|".join(url_pattern(runner)[1:-1] for runner in REGISTRY)
    url = Annotated[str, StringConstraints(pattern=f"^(?:{urls})$"), Field(title="RunnerURL")]
    union: Any = url
    for runner in REGISTRY:
        union = union | _destination_model(runner)
    destination = Annotated[union, WrapValidator(_runner_model)]
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
        clients=(dict[str, ClientModel] | None,
                 Field(None, description="clients by name: the job ids and events queues only messages signed by "
                                         "each client's certificate may use")),
        shares=(list[ShareModel] | None,
                Field(None, description="fair share: each user's or group's share of a saturated destination "
                                        "(default 1)")),
    )
    return model


__all__ = ["Destination", "Load", "Routed", "Routing", "Rule", "default_routing", "job_conf_model", "load", "parse",
           "parse_url"]
