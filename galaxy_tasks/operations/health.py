"""`galaxy-tasks health --node NAME`: is this one worker alive and consuming? For a
container health check or a systemd watchdog-style probe.

It sends one `ping` control message addressed to that node only and returns as soon as
its reply arrives (kombu stops collecting at the number of destinations), so a healthy
worker answers in milliseconds and only a dead one costs the timeout. `celery inspect ping`
without a destination waits out its whole timeout for whoever else might answer. The
worker's main process answers even when every pool process is busy with a long step.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    """Ping one worker; a broker that cannot be reached also fails within about `timeout`."""
    started = time.perf_counter()
    outcome: dict[str, object] = {}

    def send() -> None:
        try:
            from galaxy_tasks.celery import app

            outcome["replies"] = app.control.ping(destination=[node], timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is "not healthy", named
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    seconds = time.perf_counter() - started
    if thread.is_alive():
        return Health(node, False, seconds, "broker not reachable")
    if "error" in outcome:
        from galaxy_tasks.logs import redact

        return Health(node, False, seconds, redact(str(outcome["error"])))
    replies: Any = outcome.get("replies") or []
    for reply in replies:
        if reply.get(node, {}).get("ok") == "pong":
            return Health(node, True, seconds, "pong")
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
