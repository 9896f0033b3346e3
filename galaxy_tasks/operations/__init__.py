"""Operating a deployment: Flower, Prometheus metrics, usage statistics, health checks.

`add_commands` adds this package's subcommands to `galaxy-tasks`; each command's module is
imported only when it runs.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_commands(sub: argparse._SubParsersAction) -> None:
    flower = sub.add_parser(
        "flower", help="start Flower with basic auth from GALAXY_TASKS_FLOWER_BASIC_AUTH(_FILE) "
                       "(other options go to Flower)")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="127.0.0.1", help="'0.0.0.0' to listen on every interface")
    flower.add_argument("--max-tasks", type=int, help="finished tasks kept in memory "
                        "(default GALAXY_TASKS_FLOWER_MAX_TASKS, 10000)")
    flower.add_argument("--unauthenticated", action="store_true",
                        help="start without credentials: anyone who reaches the port may see and control workers")
    flower.set_defaults(handler=_flower)

    metrics = sub.add_parser("metrics", help="serve job-level Prometheus metrics from the database")
    metrics.add_argument("--port", type=int, default=9808)
    metrics.add_argument("--address", default="127.0.0.1", help="'0.0.0.0' to listen on every interface")
    metrics.add_argument("--once", action="store_true", help="print one scrape and exit")
    metrics.set_defaults(handler=_metrics)

    stats = sub.add_parser("stats", help="jobs per state, and per tool, destination or user: "
                                         "counts, queue and run times over a window")
    stats.add_argument("--since", default="24h", help="a duration back from now (24h, 7d, 90m) or an ISO date")
    stats.add_argument("--by", default="tool", help="tool, destination, user, or several: user,tool")
    stats.add_argument("--limit", type=_positive_int, default=50, help="most groups shown (the busiest first)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=_stats)

    from galaxy_tasks.operations.health import parser as health_parser

    health = sub.add_parser("health", parents=[health_parser()], add_help=False,
                            help="ping one worker; exit 0 if it answers (for health checks)")
    health.set_defaults(handler=_health)


def _positive_int(text: str) -> int:
    from galaxy_tasks.arguments import positive_int

    return positive_int(text)


def _flower(args: argparse.Namespace, extra: list[str]) -> int:
    from galaxy_tasks.operations.flower import run

    return run(extra, port=args.port, address=args.address, max_tasks=args.max_tasks,
               unauthenticated=args.unauthenticated)


def _metrics(args: argparse.Namespace, _extra: list[str]) -> int:
    try:
        from galaxy_tasks.operations.metrics import JobMetrics, make_server, scrape
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "prometheus_client":
            raise
        print("galaxy-tasks: error: `galaxy-tasks metrics` needs prometheus_client, which is not installed here; "
              "install it with: pip install 'galaxy-tasks[metrics]' (or: pip install 'prometheus_client>=0.17')",
              file=sys.stderr)
        return 2
    from galaxy_tasks.edge import runtime  # builds the Celery app: only for commands that need it


    ctx = runtime.context()
    metrics = JobMetrics(ctx.store, ctx.routing.destinations)
    if args.once:
        sys.stdout.write(scrape(metrics))
        return 0
    server = make_server(metrics, args.address, args.port)
    print(f"serving job metrics on http://{args.address}:{server.server_port}/metrics", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _stats(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.edge import runtime  # builds the Celery app: only for commands that need it
    from galaxy_tasks.operations.stats import parse_by, parse_since, render, stats


    result = stats(runtime.context().store, parse_since(args.since), parse_by(args.by), limit=args.limit)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def _health(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.operations.health import main

    return main(["--node", args.node, "--timeout", str(args.timeout), *(["--quiet"] if args.quiet else [])])
