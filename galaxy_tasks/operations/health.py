"""`galaxy-tasks health --node NAME`: is this one worker alive and consuming every queue it
was started to consume? For a container health check or a systemd watchdog-style probe.

It sends one control message (`galaxy_tasks_consuming`, galaxy_tasks.edge.consuming)
addressed to that node only and returns as soon as its reply arrives (kombu stops
collecting at the number of destinations), so a healthy worker answers in milliseconds and
only a dead one costs the timeout. `celery inspect ping` without a destination waits out
its whole timeout for whoever else might answer. The worker's main process answers even
when every pool process is busy with a long step.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from galaxy_tasks.logs import redact

if TYPE_CHECKING:
    import argparse


@dataclass
class Health:
    node: str
    ok: bool
    seconds: float
    detail: str


def node_name(pattern: str) -> str:
    """Expand `%h`, `%n`, `%d` the way `celery worker -n` does (`steps@%h` -> `steps@host`)."""
    from celery.utils.nodenames import host_format

    name = host_format(pattern, host=socket.gethostname())
    return name if "@" in name else f"{name}@{socket.gethostname()}"


def ping(node: str, timeout: float = 5.0) -> Health:
    """Ask one worker what it consumes: healthy if it answers and still consumes every queue
    it was started with (a `cancel_consumer` leaves a worker that answers but takes nothing
    from that queue). A broker that cannot be reached fails within about `timeout`."""
    started = time.perf_counter()
    outcome: dict[str, object] = {}

    def send() -> None:
        try:
            from galaxy_tasks.edge.app import app
            from galaxy_tasks.edge.consuming import COMMAND

            outcome["replies"] = app.control.broadcast(COMMAND, destination=[node], reply=True, timeout=timeout,
                                                       limit=1)
        except Exception as exc:  # noqa: BLE001 - any failure is "not healthy", named
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    seconds = time.perf_counter() - started
    if thread.is_alive():
        return Health(node, False, seconds, "broker not reachable")
    if "error" in outcome:

        return Health(node, False, seconds, redact(str(outcome["error"])))
    replies: Any = outcome.get("replies") or []
    for reply in replies:
        answer = reply.get(node)
        if isinstance(answer, dict) and isinstance(answer.get("expected"), list):
            consumed = set(answer.get("consumed") or [])
            missing = [queue for queue in answer["expected"] if queue not in consumed]
            if not answer["expected"]:
                return Health(node, False, seconds, "answers, but is not ready (no queue consumed yet)")
            if missing:
                return Health(node, False, seconds, f"answers, but is not consuming {', '.join(missing)}")
            return Health(node, True, seconds, f"pong, consuming {', '.join(answer['expected'])}")
    return Health(node, False, seconds, f"no reply within {timeout:g} s")


def parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m galaxy_tasks.operations.health",
                                     description="ping one worker; exit 0 if it answers")
    parser.add_argument("--node", "-n", required=True, help="the worker's node name, as given to -n (steps@%%h)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    parser.add_argument("--quiet", "-q", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m galaxy_tasks.operations.health --node NAME`: the same check as
    `galaxy-tasks health`, without loading the rest of the command line (half the CPU)."""
    import sys

    args = parser().parse_args(argv)
    result = ping(node_name(args.node), args.timeout)
    if not args.quiet or not result.ok:
        print(f"{result.node}: {result.detail} ({result.seconds * 1000:.0f} ms)",
              file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
