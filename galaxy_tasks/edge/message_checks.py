"""No message can stop a worker or reach a step with arguments of the wrong kind.

Celery hands a message to a task's *strategy* before anything else looks at it; a body that
is not the protocol's `[args, kwargs, embed]` makes the default strategy raise, the worker
logs "Unrecoverable error" and exits, and the message, restored, kills the next worker too.
`strategy` checks the message first and drops a malformed one with a log line that names
it; `GuardedTask` checks each argument against the step's own annotations before the step
runs, and refuses (logs, acknowledges, does nothing) a message whose arguments are wrong,
or, when messages are signed, one that is not fresh (`security.stale`).
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

from galaxy_tasks.context import Context
from galaxy_tasks.edge import messages, runtime, security
from galaxy_tasks.logs import event

log = logging.getLogger("galaxy_tasks.edge.message_checks")

#: a message body larger than this is refused unread: no step needs more (a job spec's
#: fields are bounded far below it)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SUBMIT_JOB = "galaxy_tasks.submit_job"
#: a message the broker gives back this many times (each time the worker that held it died
#: before acknowledging it) is set aside: it is what kills them
MAX_RETURNS = 4


class MessageRefused(Exception):
    """A message this worker will not act on; the text says why."""


def strategy(task: Task, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy behind a check of the message's shape."""
    handle = default(task, app, consumer, **options)

    def guarded(message: Any, body: Any, ack: Callable[..., Any], reject: Callable[..., Any],
                callbacks: Any, **kwargs: Any) -> Any:
        problem = malformed(message, body)
        if problem is None and set_aside(runtime.context(), message, body, task.name):
            return None
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
    found = arguments(message, body)
    return found if isinstance(found, str) else None


def arguments(message: Any, body: Any) -> tuple[list[Any] | tuple[Any, ...], dict[str, Any]] | str:
    """The message's (args, kwargs), or why it has none a step can take."""
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
    return args, kwargs


def _tell_submitter(ctx: Context, message: Any, body: Any, task: str, reason: str) -> None:
    """A submit set aside is a job its client would otherwise wait for forever: it hears the
    job refused, as for a spec refused at accept."""
    found = arguments(message, body) if task == SUBMIT_JOB else None
    if found is not None and not isinstance(found, str):
        _tell(ctx, found[1], task, reason)


def _tell(ctx: Context, spec: dict[str, Any], task: str, reason: str) -> None:
    try:
        told = messages.tell_refused(ctx, spec, security.signer(), reason)
    except Exception as exc:  # noqa: BLE001 - telling must never stop the worker
        event(log, "refusal_not_told", level=logging.WARNING, task=task, error=str(exc))
        return
    if told is not None:
        event(log, "submit_refused", level=logging.ERROR, error=reason[:200], job_id=told[1], told=told[0])


def set_aside(ctx: Context, message: Any, body: Any, task: str) -> bool:
    """Whether the message is set aside, for it has killed the workers that took it (then it
    is dead-lettered with a log line, and a submit's client hears its job refused)."""
    returned = killed_too_often(ctx, message, task)
    if returned is None:
        return False
    _refuse(message, task, returned, what="message_dead_lettered")
    _tell_submitter(ctx, message, body, task, f"set aside: {returned}")
    return True


def killed_too_often(ctx: Context, message: Any, task: str) -> str | None:
    """Why a returned message is set aside, or None. Only a message the broker gave back
    (`redelivered`: its worker died holding it) is counted, in the database, so the count
    survives the workers it kills; a first delivery costs nothing. A count that cannot be
    kept (the database away) lets the message through: it is not known to be the cause."""
    if not (getattr(message, "delivery_info", None) or {}).get("redelivered"):
        return None
    message_id = str((getattr(message, "headers", None) or {}).get("id") or "")[:255]
    if not message_id:
        return None
    store = ctx.store
    try:
        returns = store.count_return(message_id, task)
        if returns < MAX_RETURNS:
            return None
        store.set_aside(message_id)
    except Exception as exc:  # noqa: BLE001 - counting must never cost a message
        event(log, "return_not_counted", level=logging.WARNING, task=task, task_id=message_id, error=str(exc))
        return None
    return f"given back by the broker {returns} times: each worker that took it died before finishing it"


class GuardedTask(Task):
    """Every step's base: a signed message must be fresh (not expired, not taken before),
    and its arguments are checked against the step's annotations."""

    Strategy = "galaxy_tasks.edge.message_checks:strategy"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = getattr(self.request, "id", None)
        stale = security.stale(runtime.context(), self.request)
        if stale is not None:
            _refuse(None, self.name, stale, task_id=task_id, what="message_not_fresh")
            return None
        try:
            self.check_arguments(args, kwargs)
        except MessageRefused as exc:
            _refuse(None, self.name, str(exc), task_id=task_id)
            if self.name == SUBMIT_JOB:  # decoded (and verified, with signing on), so its client
                # hears it; not a stale one above, whose job may be running
                _tell(runtime.context(), kwargs, self.name, f"refused: {exc}")
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


def _refuse(message: Any, task: str, problem: str, task_id: str | None = None, what: str = "message_refused") -> None:
    headers = getattr(message, "headers", None) or {}
    event(log, what, level=logging.ERROR, task=task, task_id=task_id or headers.get("id"),
          queue=(getattr(message, "delivery_info", None) or {}).get("routing_key"), problem=problem)
    if message is not None and not getattr(message, "acknowledged", True):
        message.reject(requeue=False)  # dropped (a dead-letter exchange, where the broker has one)


def _kind(value: Any) -> str:
    return type(value).__name__


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
