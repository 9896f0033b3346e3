"""The runner plugin's settings: the keys of its job_conf.yml `runners:` entry.

Galaxy passes every key of the entry except `load` and `workers` to the runner's
`__init__`; a key this module does not know is refused there, when Galaxy loads its job
configuration, not when the first job runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kombu.utils.url import maybe_sanitize_url

from galaxy_tasks.galaxy.entry_points import BOUND_S
from galaxy_tasks.names import USER_NAME
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
    #: where the counters go; `{server_name}` in it is this process's server_name, so each
    #: handler of a Galaxy with several writes its own file (one file, they overwrite each other)
    stats_file: str | None = None
    submit_retries: int = 3
    #: jobs run as their Galaxy user's Unix user (Galaxy's `real_system_username` says which)
    run_as_real_user: bool = False
    #: a site's own mapping of Galaxy users (email or username) to Unix users, consulted first
    real_user_map: Mapping[str, str] = field(default_factory=dict)
    #: seconds a running interactive tool's entry points are looked for before giving up
    entry_points_timeout: int = BOUND_S

    @property
    def safe_broker_url(self) -> str:
        """The broker URL with any password masked, for logs."""
        return maybe_sanitize_url(self.broker_url)

    @property
    def signing(self) -> bool:
        return bool(self.signing_key)


KNOWN = frozenset(RunnerSettings.__dataclass_fields__) - {"server_name"} | {"instance"}


def from_kwargs(kwargs: Mapping[str, Any], server_name: str) -> RunnerSettings:
    """Settings from a job_conf runner entry's extra keys. `instance` (default: this
    process's server_name) names the Galaxy in its job ids (g-<instance>-<n>) and default
    events queue (galaxy.<instance>): give every handler of one Galaxy the same, and each
    Galaxy sharing galaxy-tasks its own."""
    unknown = sorted(set(kwargs) - KNOWN)
    if unknown:
        raise SettingsError(f"unknown galaxy-tasks runner setting {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})")
    broker_url = kwargs.get("broker_url")
    if not broker_url or not isinstance(broker_url, str):
        raise SettingsError("broker_url is required (e.g. redis://127.0.0.1:6379/0)")
    signing = tuple(kwargs.get(k) or None for k in ("signing_key", "signing_cert", "signing_cert_store"))
    if any(signing) and not all(signing):
        raise SettingsError("message signing needs signing_key, signing_cert and signing_cert_store")
    process_name, server_name = server_name, _text(kwargs, "instance", server_name)
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
        stats_file=str(kwargs["stats_file"]).replace("{server_name}", process_name) if kwargs.get("stats_file")
        else None,
        submit_retries=_count(kwargs, "submit_retries", 3),
        run_as_real_user=_bool(kwargs, "run_as_real_user", False),
        real_user_map=_user_map(kwargs.get("real_user_map")),
        entry_points_timeout=_count(kwargs, "entry_points_timeout", BOUND_S),
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
    result = {}
    for name, text in _mapping(value, "environment", "variable names to strings").items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise SettingsError(f"environment: {name!r} is not a valid variable name")
        result[name] = str(text)
    return result


def _user_map(value: Any) -> dict[str, str]:
    users = _mapping(value, "real_user_map", "Galaxy users (email or username) to Unix users")
    for galaxy_user, unix_user in users.items():
        if not isinstance(unix_user, str) or not USER_NAME.match(unix_user):
            raise SettingsError(f"real_user_map: {galaxy_user!r} maps to {unix_user!r}, which is not a Unix user name")
    return {str(galaxy_user): unix_user for galaxy_user, unix_user in users.items()}


def _mapping(value: Any, name: str, of: str) -> Mapping[Any, Any]:
    """A setting that maps one thing to another (none given: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"{name} must be a mapping of {of}")
    return value
