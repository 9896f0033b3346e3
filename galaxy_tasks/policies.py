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
from typing import Annotated, Any, Literal, Mapping, Sequence, get_args

from pydantic import BaseModel, ConfigDict, Field

from galaxy_tasks import expressions
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


# -- parsing -----------------------------------------------------------------------------


def parse_limits(items: Any, here: Where, destinations: Mapping[str, Any]) -> Limits:
    """Galaxy's top-level `limits:` list."""
    if items is None:
        return Limits()
    if not isinstance(items, list):
        raise here.error("must be a list of limits")
    concurrency: list[ConcurrencyLimit] = []
    sizes: dict[str, int] = {}
    for index, item in enumerate(items):
        where = Where(here.source, f"{here.path}[{index}]", getattr(item, "line", here.line))
        kind, value = _limit_type(item, where)
        if kind in SIZES:
            sizes[kind] = value
            continue
        destination, tag = item.get("id"), item.get("tag")
        if kind in ("registered_user_concurrent_jobs", "anonymous_user_concurrent_jobs"):
            if destination is not None or tag is not None:
                raise where.error(f"{item['type']} applies to every destination: it takes no id or tag")
        else:
            if (destination is None) == (tag is None):
                raise where.error(f"{item['type']} needs either an id (a destination) or a tag")
            if destination is not None and destination not in destinations:
                raise where.key(item, "id").error(f"unknown destination {destination!r}")
            if tag is not None and not isinstance(tag, str):
                raise where.key(item, "tag").error("must be a tag name")
        if value == 0 and kind in ("registered_user_concurrent_jobs", "anonymous_user_concurrent_jobs"):
            continue  # as in Galaxy: 0 is no limit for users (a destination's 0 lets none run)
        concurrency.append(ConcurrencyLimit(kind, value, destination, tag))
    return Limits(tuple(concurrency), sizes.get("walltime"), sizes.get("output_size"))


def parse_destination_policy(value: Mapping[str, Any], here: Where, destinations: set[str]) -> DestinationPolicy:
    """A destination's `tags:`, `resubmit:` and `limits:` (walltime, output_size)."""
    tags = value.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise here.key(value, "tags").error("must be a tag or a list of tags")
    rules = value.get("resubmit") or []
    if isinstance(rules, Mapping):
        rules = [rules]
    if not isinstance(rules, list):
        raise here.key(value, "resubmit").error("must be a list of rules")
    parsed = tuple(_resubmit_rule(rule, Where(here.source, f"{here.path}.resubmit[{i}]",
                                              getattr(rule, "line", here.line)), destinations)
                   for i, rule in enumerate(rules))
    sizes: dict[str, int] = {}
    limits = value.get("limits") or []
    if not isinstance(limits, list):
        raise here.key(value, "limits").error("must be a list of limits")
    for index, item in enumerate(limits):
        where = Where(here.source, f"{here.path}.limits[{index}]", getattr(item, "line", here.line))
        kind, amount = _limit_type(item, where)
        if kind not in SIZES:
            raise where.error(f"a destination's own limits are {' and '.join(SIZES)}; {item['type']} goes in the "
                              "top-level limits, with id: this destination")
        sizes[kind] = amount
    return DestinationPolicy(tuple(tags), parsed, sizes.get("walltime"), sizes.get("output_size"))


def _resubmit_rule(item: Any, here: Where, destinations: set[str]) -> ResubmitRule:
    if not isinstance(item, Mapping):
        raise here.error("must be a mapping with a condition and/or a destination")
    for key in item:
        if key not in ("condition", "destination", "environment", "delay", "handler"):
            raise here.unknown(item, key)
    target = item.get("destination", item.get("environment"))
    if target is not None and target not in destinations:
        raise here.key(item, "destination").error(f"unknown destination {target!r}")
    try:
        condition = expressions.parse(item["condition"], CONDITION_NAMES) if "condition" in item else None
    except ExpressionError as exc:
        raise here.key(item, "condition").error(str(exc)) from None
    try:
        delay = expressions.parse(item["delay"], DELAY_NAMES) if "delay" in item else None
    except ExpressionError as exc:
        raise here.key(item, "delay").error(str(exc)) from None
    return ResubmitRule(condition, target, delay)


def _limit_type(item: Any, here: Where) -> tuple[str, int]:
    if not isinstance(item, Mapping) or "type" not in item:
        raise here.error("must be a mapping with a type and a value")
    for key in item:
        if key not in ("type", "value", "id", "tag"):
            raise here.unknown(item, key)
    kind = item["type"]
    if kind in SIZES:
        parse_value = duration_s if kind == "walltime" else size_bytes
        try:
            return kind, parse_value(item.get("value"))
        except ValueError as exc:
            raise here.key(item, "value").error(str(exc)) from None
    if kind not in CONCURRENCY:
        raise here.key(item, "type").error(f"unknown limit type {kind!r} (known: "
                                           f"{', '.join(sorted([*CONCURRENCY, *SIZES]))})")
    value = item.get("value")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise here.key(item, "value").error(f"must be a whole number of at least 0, not {value!r}")
    return CONCURRENCY[kind], value


def duration_s(value: Any) -> int:
    """`'24:00:00'`, `'1-12:00:00'` (days-), `'90:00'`, or seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like '24:00:00', not {value!r}")
    if isinstance(value, int) and value > 0:
        return value
    match = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", str(value))
    if not match:
        raise ValueError(f"must be a duration like '24:00:00' or '1-00:00:00', not {value!r}")
    days, first, second, third = (int(g) if g else 0 for g in match.groups())
    if match.group(4) is not None:
        seconds = first * 3600 + second * 60 + third
    elif match.group(3) is not None:
        seconds = first * 60 + second
    else:
        seconds = first
    seconds += days * 86400
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, not {value!r}")
    return seconds


def size_bytes(value: Any) -> int:
    """`'10GB'` (10^10 bytes, as Galaxy reads it), `'512MiB'`, `'1.5 TB'`, or bytes."""
    if isinstance(value, bool):
        raise ValueError(f"must be a size like '10GB', not {value!r}")
    if isinstance(value, int) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"must be a size like '10GB' or '512MiB', not {value!r}")
    amount = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if amount <= 0:
        raise ValueError(f"must be larger than zero, not {value!r}")
    return amount



# -- schema --------------------------------------------------------------------------------
# The models of the policy keys, for the job_conf's published JSON Schema; the parsing above
# is what checks a loaded job_conf, expressions and durations included.

_Amount = Annotated[int, Field(strict=True, ge=0)] | Annotated[str, Field(strict=True, min_length=1)]
LimitType = Literal["registered_user_concurrent_jobs", "anonymous_user_concurrent_jobs",
                    "destination_user_concurrent_jobs", "destination_total_concurrent_jobs",
                    "environment_user_concurrent_jobs", "environment_total_concurrent_jobs", "walltime",
                    "output_size"]
assert set(get_args(LimitType)) == {*CONCURRENCY, *SIZES}


class LimitModel(BaseModel):
    """A limit of Galaxy's top-level `limits:` list."""

    model_config = ConfigDict(extra="forbid", title="Limit")
    type: LimitType = Field(description="a concurrency limit (jobs at once), or walltime / output_size")
    value: _Amount = Field(description="jobs at once; a duration ('24:00:00'); a size ('10GB')")
    id: str | None = Field(None, description="destination_* limits: the destination they count")
    tag: str | None = Field(None, description="destination_* limits: every destination with this tag")


class DestinationLimitModel(BaseModel):
    """A destination's own walltime or output_size."""

    model_config = ConfigDict(extra="forbid", title="DestinationLimit")
    type: Literal["walltime", "output_size"] = Field(description="what is limited")
    value: _Amount = Field(description="a duration ('24:00:00') or a size ('10GB')")


class ResubmitModel(BaseModel):
    """A resubmit rule: if its condition holds for a failed job, the job runs again there."""

    model_config = ConfigDict(extra="forbid", title="ResubmitRule")
    condition: str | None = Field(None, description="an expression over " + ", ".join(sorted(CONDITION_NAMES)))
    destination: str | None = Field(None, description="where to run it again (default: the same destination)")
    environment: str | None = Field(None, description="the same as destination (Galaxy's newer word)")
    delay: str | float | None = Field(None, description="seconds to wait first; an expression over attempt")
    handler: str | None = Field(None, description="accepted for Galaxy compatibility, not used")
