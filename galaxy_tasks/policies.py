"""Galaxy's job policies, in Galaxy's own words, so an admin can copy them from a Galaxy
job_conf.yml: the top-level `limits:` list (concurrency per user and per destination,
walltime, output size) and each destination's `resubmit:` list.

This module parses and decides; it keeps no state. Concurrency is counted in the database
(store `limit_usage`), exactly across any number of workers: see lifecycle/limits.py.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Annotated, Any, Callable, Container, Literal, Mapping, Sequence, get_args

from pydantic import BaseModel, ConfigDict, Field

from galaxy_tasks import expressions
from galaxy_tasks.confmodels import says, shown
from galaxy_tasks.expressions import Expression, ExpressionError
from galaxy_tasks.yamlconf import Where

#: Galaxy's concurrency limit types, and the newer `environment_*` spellings of two of them
CONCURRENCY = {
    "registered_user_concurrent_jobs": "registered_user_concurrent_jobs",
    "anonymous_user_concurrent_jobs": "anonymous_user_concurrent_jobs",
    "destination_user_concurrent_jobs": "destination_user_concurrent_jobs",
    "destination_total_concurrent_jobs": "destination_total_concurrent_jobs",
    "environment_user_concurrent_jobs": "destination_user_concurrent_jobs",
    "environment_total_concurrent_jobs": "destination_total_concurrent_jobs",
}
SIZES = ("walltime", "output_size")
#: what a resubmit condition may name: Galaxy's conditions and its attempt/time variables
CONDITION_NAMES = frozenset({"walltime_reached", "memory_limit_reached", "unknown_error", "tool_detected_failure",
                             "tool_timelimit_reached", "any_failure", "any_potential_job_failure", "attempt",
                             "seconds_since_queued", "seconds_running"})
DELAY_NAMES = frozenset({"attempt"})
#: the runner states a job can end with (Galaxy's JobState.runner_states)
RUNNER_STATES = frozenset({"walltime_reached", "memory_limit_reached", "output_size_limit", "unknown_error",
                           "global_walltime_reached"})
#: the ends Galaxy's resubmit handler acts on (`tool_detected`: the tool's own non-zero
#: exit); an output too large or the global walltime is never resubmitted
RESUBMITTABLE = frozenset({"walltime_reached", "memory_limit_reached", "unknown_error", "tool_detected"})
MAX_ATTEMPTS = 10
#: Galaxy's sizes (galaxy.util.size_to_bytes): decimal multiples, binary with `iB`
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


@dataclass(frozen=True)
class ConcurrencyLimit:
    kind: str  # one of CONCURRENCY's values
    value: int
    destination: str | None = None  # `id:` a destination
    tag: str | None = None  # `tag:` every destination with this tag

    def key(self, user: str | None, destination: str, tags: Sequence[str]) -> str | None:
        """The counter a job of `user` on `destination` takes a place under, if any."""
        if self.kind == "registered_user_concurrent_jobs":
            return bounded(f"user:{user}") if user else None
        if self.kind == "anonymous_user_concurrent_jobs":
            return "anonymous" if not user else None
        if self.destination is not None and self.destination != destination:
            return None
        if self.tag is not None and self.tag not in tags:
            return None
        scope = f"destination:{destination}" if self.destination else f"tag:{self.tag}"
        return bounded(f"{scope}:user:{user or '-'}" if self.kind == "destination_user_concurrent_jobs" else scope)


def bounded(key: str, most: int = 200) -> str:
    """A counter key that fits its column: a long one (a long user name) keeps its start
    and ends in a digest of the whole."""
    if len(key) <= most:
        return key
    return f"{key[:most - 18]}#{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Limits:
    concurrency: tuple[ConcurrencyLimit, ...] = ()
    walltime_s: int | None = None
    output_size_bytes: int | None = None

    def keys(self, user: str | None, destination: str, tags: Sequence[str]) -> dict[str, int]:
        """Every counter key that applies to such a job, with its limit (the smallest, when
        several limits share a key)."""
        found: dict[str, int] = {}
        for limit in self.concurrency:
            key = limit.key(user, destination, tags)
            if key is not None:
                found[key] = min(limit.value, found.get(key, limit.value))
        return found


@dataclass(frozen=True)
class ResubmitRule:
    condition: Expression | None
    destination: str | None  # None: the same destination
    delay: Expression | None = None

    def matches(self, names: Mapping[str, Any]) -> bool:
        if self.condition is None:
            return True
        try:
            return bool(self.condition.evaluate(names))
        except ArithmeticError:  # an overflow, a division by zero: the condition does not hold
            return False

    def delay_s(self, attempt: int) -> float:
        if self.delay is None:
            return 0.0
        try:
            value = self.delay.evaluate({"attempt": attempt})
            return max(0.0, min(float(value), 86400.0)) if isinstance(value, (int, float)) else 0.0
        except ArithmeticError:
            return 86400.0


@dataclass(frozen=True)
class Resubmission:
    """What a matching rule says: run the job again there, after this many seconds."""

    destination: str
    delay_s: float
    rule: str


@dataclass(frozen=True)
class DestinationPolicy:
    tags: tuple[str, ...] = ()
    resubmit: tuple[ResubmitRule, ...] = ()
    walltime_s: int | None = None
    output_size_bytes: int | None = None
    extra: Mapping[str, Any] = dataclass_field(default_factory=dict)


def ended_as(runner_state: str | None, exit_code: int | None, signal: int | None) -> str:
    """How a failed job ended, in Galaxy's runner states: what its runner said, else
    `tool_detected` for the tool's own non-zero exit, else `unknown_error`."""
    if runner_state:
        return runner_state
    if exit_code not in (None, 0) and signal is None:
        return "tool_detected"
    return "unknown_error"


def condition_names(runner_state: str | None, exit_code: int | None, signal: int | None, attempt: int,
                    seconds_since_queued: float, seconds_running: float) -> dict[str, Any]:
    """What a resubmit condition sees of a job that failed (as Galaxy's resubmit handler)."""
    ended = ended_as(runner_state, exit_code, signal)
    return {
        "ended_as": ended,
        "walltime_reached": ended == "walltime_reached",
        "memory_limit_reached": ended == "memory_limit_reached",
        "unknown_error": ended == "unknown_error",
        "tool_detected_failure": ended == "tool_detected",
        "tool_timelimit_reached": False,  # tools here have no time limit of their own
        "any_failure": True,
        "any_potential_job_failure": True,
        "attempt": attempt,
        "seconds_since_queued": seconds_since_queued,
        "seconds_running": seconds_running,
    }


def choose(rules: Sequence[ResubmitRule], names: Mapping[str, Any], destination: str) -> Resubmission | None:
    """The first rule that matches, as a resubmission; None if none does (or too many tries)."""
    if names["attempt"] >= MAX_ATTEMPTS or names["ended_as"] not in RESUBMITTABLE:
        return None
    for rule in rules:
        if rule.matches(names):
            return Resubmission(rule.destination or destination, rule.delay_s(names["attempt"]),
                                rule.condition.text if rule.condition else "(always)")
    return None


def duration_s(value: Any) -> int:
    """`'24:00:00'`, `'1-12:00:00'` (days-), `'90:00'`, or seconds."""
    return _positive(value, "a duration like '24:00:00' or '1-00:00:00'", "longer", _DURATION, _seconds)


def size_bytes(value: Any) -> int:
    """`'10GB'` (10^10 bytes, as Galaxy reads it), `'512MiB'`, `'1.5 TB'`, or bytes."""
    return _positive(value, "a size like '10GB' or '512MiB'", "larger", _SIZE, _bytes)


_DURATION = re.compile(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def _positive(value: Any, like: str, more: str, pattern: re.Pattern[str],
              amount: Callable[[re.Match[str]], int | None]) -> int:
    """A whole number above zero as it is, or what `amount` reads from text `pattern` matches."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = None if isinstance(value, bool) else pattern.fullmatch(str(value))
    found = amount(match) if match else None
    if found is None:
        raise ValueError(f"must be {like}, not {value!r}")
    if found <= 0:
        raise ValueError(f"must be {more} than zero, not {value!r}")
    return found


def _seconds(match: re.Match[str]) -> int:
    days, first, second, third = (int(g) if g else 0 for g in match.groups())
    if match.group(4) is not None:
        seconds = first * 3600 + second * 60 + third
    elif match.group(3) is not None:
        seconds = first * 60 + second
    else:
        seconds = first
    return seconds + days * 86400


def _bytes(match: re.Match[str]) -> int | None:
    unit = match.group(2).lower()
    return int(float(match.group(1)) * _UNITS[unit]) if unit in _UNITS else None


# -- the grammar ---------------------------------------------------------------------------
# The policy keys of the job_conf: these models check a loaded job_conf and are its published
# JSON Schema; what they cannot say is checked above.

_Amount = Annotated[int, Field(strict=True, ge=0)] | Annotated[str, Field(strict=True, min_length=1)]
LimitType = Literal["registered_user_concurrent_jobs", "anonymous_user_concurrent_jobs",
                    "destination_user_concurrent_jobs", "destination_total_concurrent_jobs",
                    "environment_user_concurrent_jobs", "environment_total_concurrent_jobs", "walltime",
                    "output_size"]
assert set(get_args(LimitType)) == {*CONCURRENCY, *SIZES}


class LimitModel(BaseModel):
    """A limit of Galaxy's top-level `limits:` list."""

    model_config = ConfigDict(extra="forbid", title="Limit")
    type: Annotated[LimitType, says(lambda kind: f"unknown limit type {shown(kind)} (known: "
                                                 f"{', '.join(sorted([*CONCURRENCY, *SIZES]))})")] = Field(
        description="a concurrency limit (jobs at once), or walltime / output_size")
    value: Annotated[_Amount, says("must be a whole number of at least 0 (jobs at once), a duration ('24:00:00') "
                                   "or a size ('10GB')")] = Field(
        description="jobs at once; a duration ('24:00:00'); a size ('10GB')")
    id: str | None = Field(None, description="destination_* limits: the destination they count")
    tag: str | None = Field(None, description="destination_* limits: every destination with this tag")


class DestinationLimitModel(BaseModel):
    """A destination's own walltime or output_size."""

    model_config = ConfigDict(extra="forbid", title="DestinationLimit")
    type: Annotated[Literal["walltime", "output_size"], says(
        lambda kind: f"a destination's own limits are {' and '.join(SIZES)}; {shown(kind)} goes in the top-level "
                     "limits, with id: this destination")] = Field(description="what is limited")
    value: Annotated[_Amount, says("must be a duration ('24:00:00') or a size ('10GB')")] = Field(
        description="a duration ('24:00:00') or a size ('10GB')")


class ResubmitModel(BaseModel):
    """A resubmit rule: if its condition holds for a failed job, the job runs again there."""

    model_config = ConfigDict(extra="forbid", title="ResubmitRule")
    condition: str | None = Field(None, description="an expression over " + ", ".join(sorted(CONDITION_NAMES)))
    destination: str | None = Field(None, description="where to run it again (default: the same destination)")
    environment: str | None = Field(None, description="the same as destination (Galaxy's newer word)")
    delay: Annotated[str | float, says("must be seconds or an expression over attempt")] | None = Field(
        None, description="seconds to wait first; an expression over attempt")
    handler: str | None = Field(None, description="accepted for Galaxy compatibility, not used")


# -- from the checked job_conf -------------------------------------------------------------
# What the models below cannot say: the destinations a limit or a resubmit rule names, the
# value each limit type takes, expressions and durations.

#: the limits that count a user's jobs everywhere: they take no id or tag
USER_LIMITS = ("registered_user_concurrent_jobs", "anonymous_user_concurrent_jobs")


def limits_from(given: Sequence[LimitModel] | None, here: Where, destinations: Container[str]) -> Limits:
    """Galaxy's top-level `limits:` list."""
    concurrency: list[ConcurrencyLimit] = []
    sizes: dict[str, int] = {}
    for index, limit in enumerate(given or ()):
        where = here.at(index)
        if limit.type in SIZES:
            sizes[limit.type] = _size(limit, where)
            continue
        if isinstance(limit.value, str):
            raise where.at("value").error(f"must be a whole number of at least 0, not {limit.value!r}")
        if limit.type in USER_LIMITS:
            if limit.id is not None or limit.tag is not None:
                raise where.error(f"{limit.type} applies to every destination: it takes no id or tag")
            if limit.value == 0:
                continue  # as in Galaxy: 0 is no limit for users (a destination's 0 lets none run)
        elif (limit.id is None) == (limit.tag is None):
            raise where.error(f"{limit.type} needs either an id (a destination) or a tag")
        elif limit.id is not None and limit.id not in destinations:
            raise where.at("id").error(f"unknown destination {limit.id!r}")
        concurrency.append(ConcurrencyLimit(CONCURRENCY[limit.type], limit.value, limit.id, limit.tag))
    return Limits(tuple(concurrency), sizes.get("walltime"), sizes.get("output_size"))


def policy_from(destination: Any, here: Where, destinations: Container[str]) -> DestinationPolicy:
    """A destination's `tags:`, `resubmit:` and `limits:` (walltime, output_size), from its
    checked model (`here` is the destination's place)."""
    tags = [destination.tags] if isinstance(destination.tags, str) else destination.tags or []
    rules = tuple(_resubmit_rule(rule, here.at("resubmit", index), destinations)
                  for index, rule in enumerate(destination.resubmit or ()))
    sizes = {limit.type: _size(limit, here.at("limits", index)) for index, limit in enumerate(destination.limits or ())}
    return DestinationPolicy(tuple(tags), rules, sizes.get("walltime"), sizes.get("output_size"))


def _resubmit_rule(rule: ResubmitModel, here: Where, destinations: Container[str]) -> ResubmitRule:
    key = "destination" if rule.destination is not None else "environment"
    target = getattr(rule, key)
    if target is not None and target not in destinations:
        raise here.at(key).error(f"unknown destination {target!r}")
    return ResubmitRule(_expression(rule.condition, CONDITION_NAMES, here.at("condition")), target,
                        _expression(rule.delay, DELAY_NAMES, here.at("delay")))


def _expression(text: str | float | None, names: frozenset[str], here: Where) -> Expression | None:
    if text is None:
        return None
    try:
        return expressions.parse(str(text), names)
    except ExpressionError as exc:
        raise here.error(str(exc)) from None


def _size(limit: LimitModel | DestinationLimitModel, here: Where) -> int:
    read = duration_s if limit.type == "walltime" else size_bytes
    try:
        return read(limit.value)
    except ValueError as exc:
        raise here.at("value").error(str(exc)) from None
