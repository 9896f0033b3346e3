"""The runner plugin's settings: the keys of its job_conf.yml `runners:` entry.

Galaxy passes every key of the entry except `load` and `workers` to the runner's
`__init__`; a key this module does not know is refused there, when Galaxy loads its job
configuration, not when the first job runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kombu.utils.url import maybe_sanitize_url

from galaxy_tasks.spec import ENV_NAME

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A runner setting that is missing or wrong; the message names it."""


@dataclass(frozen=True)
class RunnerSettings:
    broker_url: str
    server_name: str
    steps_queue: str = "galaxy_tasks"
    events: bool = True  # false: jobs are only submitted, nothing ends them in Galaxy
    events_queue: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    signing_key: str | None = None
    signing_cert: str | None = None
    signing_cert_store: str | None = None
    stats_file: str | None = None
    submit_retries: int = 3

    @property
    def safe_broker_url(self) -> str:
        """The broker URL with any password masked, for logs."""
        return maybe_sanitize_url(self.broker_url)

    @property
    def signing(self) -> bool:
        return bool(self.signing_key)


KNOWN = frozenset(RunnerSettings.__dataclass_fields__) - {"server_name"}


def from_kwargs(kwargs: Mapping[str, Any], server_name: str) -> RunnerSettings:
    """Settings from a job_conf runner entry's extra keys."""
    unknown = sorted(set(kwargs) - KNOWN)
    if unknown:
        raise SettingsError(f"unknown galaxy-tasks runner setting {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})")
    broker_url = kwargs.get("broker_url")
    if not broker_url or not isinstance(broker_url, str):
        raise SettingsError("broker_url is required (e.g. redis://127.0.0.1:6379/0)")
    signing = tuple(kwargs.get(k) or None for k in ("signing_key", "signing_cert", "signing_cert_store"))
    if any(signing) and not all(signing):
        raise SettingsError("message signing needs signing_key, signing_cert and signing_cert_store")
    return RunnerSettings(
        broker_url=broker_url,
        server_name=server_name,
        steps_queue=_text(kwargs, "steps_queue", "galaxy_tasks"),
        events=_bool(kwargs, "events", True),
        events_queue=_text(kwargs, "events_queue", f"galaxy.{server_name}"),
        environment=_environment(kwargs.get("environment")),
        signing_key=signing[0],
        signing_cert=signing[1],
        signing_cert_store=signing[2],
        stats_file=kwargs.get("stats_file") or None,
        submit_retries=_count(kwargs, "submit_retries", 3),
    )


def _text(kwargs: Mapping[str, Any], name: str, default: str) -> str:
    value = kwargs.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _bool(kwargs: Mapping[str, Any], name: str, default: bool) -> bool:
    value = kwargs.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _count(kwargs: Mapping[str, Any], name: str, default: int) -> int:
    value = kwargs.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a whole number, not {value!r}") from None
    if number < 0:
        raise SettingsError(f"{name} must not be negative, not {value!r}")
    return number


def _environment(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError("environment must be a mapping of variable names to strings")
    result = {}
    for name, text in value.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise SettingsError(f"environment: {name!r} is not a valid variable name")
        result[name] = str(text)
    return result
