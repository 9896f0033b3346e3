"""No message can stop a worker or reach a step with arguments of the wrong kind.

Celery hands a message to a task's *strategy* before anything else looks at it; a body that
is not the protocol's `[args, kwargs, embed]` makes the default strategy raise, the worker
logs "Unrecoverable error" and exits, and the message, restored, kills the next worker too.
`strategy` checks the message first and drops a malformed one with a log line that names
it; `GuardedTask` checks each argument against the step's own annotations before the step
runs, and refuses (logs, acknowledges, does nothing) a message whose arguments are wrong.
"""
from __future__ import annotations

import inspect
import logging
import types
import typing
from functools import cached_property
from typing import Any, Callable

from celery import Task
from celery.worker.strategy import default

from galaxy_tasks.logs import event

log = logging.getLogger("galaxy_tasks.guard")

#: a message body larger than this is refused unread: no step needs more (a job spec's
#: fields are bounded far below it)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class MessageRefused(Exception):
    """A message this worker will not act on; the text says why."""


def strategy(task: Task, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy behind a check of the message's shape."""
    handle = default(task, app, consumer, **options)

    def guarded(message: Any, body: Any, ack: Callable[..., Any], reject: Callable[..., Any],
                callbacks: Any, **kwargs: Any) -> Any:
        problem = malformed(message, body)
        if problem is None:
            try:
                return handle(message, body, ack, reject, callbacks, **kwargs)
            except Exception as exc:  # noqa: BLE001 - nothing a message holds may stop the worker
                problem = f"{type(exc).__name__}: {exc}"
        _refuse(message, task.name, problem)
        return None

    return guarded


def malformed(message: Any, body: Any) -> str | None:
    """Why this message is not a task message a step can take, or None."""
    raw = getattr(message, "body", b"")
    if isinstance(raw, (bytes, str)) and len(raw) > MAX_MESSAGE_BYTES:
        return f"body of {len(raw)} bytes (at most {MAX_MESSAGE_BYTES})"
    if body is None:  # not decoded yet: the payload is what will be read
        body = getattr(message, "payload", None)
    if isinstance(body, dict):  # protocol 1, or a hybrid: the arguments are named inside
        args, kwargs = body.get("args", []), body.get("kwargs", {})
    elif isinstance(body, (list, tuple)) and len(body) == 3:
        args, kwargs, embed = body
        if not isinstance(embed, dict) and embed is not None:
            return f"embed must be an object, not {type(embed).__name__}"
    else:
        return f"body must be [args, kwargs, embed], not {_kind(body)}"
    if not isinstance(args, (list, tuple)):
        return f"args must be a list, not {_kind(args)}"
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        return f"kwargs must be an object with string keys, not {_kind(kwargs)}"
    return None


class GuardedTask(Task):
    """Every step's base: its arguments are checked against the step's annotations."""

    Strategy = "galaxy_tasks.guard:strategy"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            self.check_arguments(args, kwargs)
        except MessageRefused as exc:
            _refuse(None, self.name, str(exc), task_id=getattr(self.request, "id", None))
            return None
        return super().__call__(*args, **kwargs)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise MessageRefused(f"arguments do not fit: {exc}") from None
        for name, value in bound.arguments.items():
            hint = self._hints.get(name)
            if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD or hint is None:
                continue  # (a job spec as keywords is checked field by field by the spec parser)
            if not conforms(value, hint):
                raise MessageRefused(f"{name} must be {_describe(hint)}, not {_kind(value)}")

    @cached_property
    def _signature(self) -> inspect.Signature:
        return inspect.signature(self.run)

    @cached_property
    def _hints(self) -> dict[str, Any]:
        hints = typing.get_type_hints(self.run)
        hints.pop("return", None)
        return hints


def conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a (simple) annotation: str, int, float, bool, None, Any,
    unions of those, list[...], dict[str, ...]."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return any(conforms(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(conforms(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(conforms(k, key) and conforms(v, item) for k, v in value.items())
    return isinstance(value, hint) if isinstance(hint, type) else True


def _refuse(message: Any, task: str, problem: str, task_id: str | None = None) -> None:
    headers = getattr(message, "headers", None) or {}
    event(log, "message_refused", level=logging.ERROR, task=task, task_id=task_id or headers.get("id"),
          queue=(getattr(message, "delivery_info", None) or {}).get("routing_key"), problem=problem)
    if message is not None and not getattr(message, "acknowledged", True):
        message.reject(requeue=False)  # dropped (a dead-letter exchange, where the broker has one)


def _kind(value: Any) -> str:
    return type(value).__name__


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
