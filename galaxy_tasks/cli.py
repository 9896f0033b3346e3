"""`galaxy-tasks`: run jobs embedded, submit and follow jobs, start workers, migrate."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from sqlalchemy.exc import DatabaseError

from galaxy_tasks.arguments import embedded_options, positive_int
from galaxy_tasks.errors import NotSent

if TYPE_CHECKING:
    from galaxy_tasks.client import Client

from galaxy_tasks import config, context, lifecycle
from galaxy_tasks.errors import ConfigError, SpecError
from galaxy_tasks.logs import escape_controls, printable, redact
from galaxy_tasks.render import JobProgress, fields, is_terminal, print_table
from galaxy_tasks.states import TERMINAL, JobState


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("worker", "beat", "flower"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args, extra)
    except (SpecError, ConfigError, ValueError, LookupError) as exc:
        print(f"galaxy-tasks: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except DatabaseError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) is not None else exc).splitlines()[0]
        print(f"galaxy-tasks: error: the job database refused: {redact(reason)} (is it reachable, and its schema "
              "current? `galaxy-tasks db upgrade` migrates it)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `galaxy-tasks list | head`: the reader has gone, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galaxy-tasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the jobs of a YAML file in this process (embedded mode)")
    run.add_argument("jobs_file", type=Path)
    embedded_options(run)
    run.set_defaults(handler=_run)

    submit = sub.add_parser("submit", help="submit one job and print its id")
    submit.add_argument("--spec", type=Path, help="a JSON job spec file ('-' for standard input)")
    submit.add_argument("--tool-id")
    submit.add_argument("--tool-version")
    submit.add_argument("--command", dest="job_command")
    submit.add_argument("--user")
    submit.add_argument("--cores", type=int)
    submit.add_argument("--memory-mb", type=int)
    submit.add_argument("--walltime-s", type=int)
    submit.add_argument("--destination")
    submit.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    submit.add_argument("--output", action="append", default=[], metavar="PATH")
    submit.add_argument("--events-queue", help="a queue of yours where the job's events go (docs/events.md)")
    submit.add_argument("--client-id", help="an id of yours that each of the job's events carries back")
    submit.add_argument("--json", action="store_true")
    submit.set_defaults(handler=_submit)

    status = sub.add_parser("status", help="show one job")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    provenance = sub.add_parser("provenance", help="the chain of jobs that produced a job's outputs")
    provenance.add_argument("job_id")
    provenance.add_argument("--json", action="store_true")
    provenance.set_defaults(handler=_provenance)

    listing = sub.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--state", choices=[s.value for s in JobState])
    listing.add_argument("--limit", type=positive_int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=_cancel)

    wait = sub.add_parser("wait", help="wait for jobs to end; exit 0 only if all ended ok")
    wait.add_argument("job_ids", nargs="+")
    wait.add_argument("--timeout", type=float)
    wait.add_argument("--json", action="store_true")
    wait.set_defaults(handler=_wait)

    events = sub.add_parser("events", help="job events: the latest state changes, or (--follow) as they happen")
    events.add_argument("job_ids", nargs="*", help="only these jobs")
    events.add_argument("--follow", "-f", action="store_true", help="print events as they happen until Ctrl-C")
    events.add_argument("--limit", type=positive_int, default=20, help="without --follow: how many jobs")
    events.add_argument("--json", action="store_true", help="one JSON event per line")
    events.set_defaults(handler=_events)

    worker = sub.add_parser("worker", help="start a Celery worker (other options go to Celery)")
    worker.add_argument("--queues", "-Q", help="comma-separated queues (default: every configured queue)")
    worker.set_defaults(handler=_worker)

    beat = sub.add_parser("beat", help="start Celery beat, which schedules reconciliation")
    beat.set_defaults(handler=_beat)

    staging = sub.add_parser("staging-server", help="serve the http staging transfer: jobs' inputs to far workers, "
                                                    "their files back (docs/staging.md)")
    staging.set_defaults(handler=_staging_server)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(handler=_db)

    bench = sub.add_parser("bench", help="measure throughput and latency against a bare Celery chain")
    bench.add_argument("--jobs", type=int, default=200)
    bench.add_argument("--latency-jobs", type=int, default=50)
    bench.add_argument("--workers", type=int, default=2, help="worker processes the benchmark starts")
    bench.add_argument("--rounds", type=int, default=3, help="alternating rounds of baseline and jobs")
    bench.add_argument("--ends-worker", action="store_true",
                       help="also start a worker of the ends queue alone (compare the burst's ends with and without)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_bench)

    route = sub.add_parser("route", help="where a job spec would go, and why")
    route.add_argument("spec", type=Path, help="a JSON job spec file ('-' for standard input)")
    route.add_argument("--explain", action="store_true", help="the rule that matched, the limits that apply and "
                                                            "how full they are now, the resubmit rules")
    route.add_argument("--json", action="store_true")
    route.set_defaults(handler=_route)

    show = sub.add_parser("config", help="show the settings in force (passwords hidden)")
    show.add_argument("--runner-params", action="store_true",
                      help="every registered runner's params, their types and defaults (Markdown tables)")
    show.set_defaults(handler=_config)

    schema = sub.add_parser("schema", help="print the JSON Schema of the job spec, the job event or the job_conf "
                                           "(docs/schemas.md)")
    schema.add_argument("name", nargs="?", choices=["spec", "event", "job-conf"])
    schema.add_argument("--write", type=Path, metavar="DIR", help="write all three as DIR/<name>.schema.json")
    schema.set_defaults(handler=_schema)

    from galaxy_tasks.operations import add_commands

    add_commands(sub)  # flower, metrics, stats, health
    from galaxy_tasks.workflows.cli import add_commands as add_workflow_commands

    add_workflow_commands(sub)
    return parser


def _client() -> Client:
    from galaxy_tasks.client import Client

    return Client()


def _run(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.run import run_file

    return run_file(args.jobs_file, concurrency=args.concurrency, timeout=args.timeout)


def _submit(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.spec import parse_json

    if args.spec is not None:
        text = sys.stdin.read() if str(args.spec) == "-" else args.spec.read_text()
        spec = parse_json(text)
    else:
        data: dict = {"tool_id": args.tool_id, "command": args.job_command}
        for key in ("tool_version", "user", "cores", "memory_mb", "walltime_s", "destination"):
            if getattr(args, key) is not None:
                data[key] = getattr(args, key)
        if args.env:
            data["environment"] = dict(_pair(item) for item in args.env)
        if args.output:
            data["outputs"] = args.output
        if args.events_queue:
            data["events"] = {"queue": args.events_queue, "client_id": args.client_id}
        from galaxy_tasks.spec import parse

        spec = parse(data)
    try:
        job = _client().submit(spec)
    except NotSent as exc:
        print(json.dumps({"id": exc.job.id, "state": exc.job.state, "sent": False}) if args.json else exc.job.id)
        print(f"galaxy-tasks: the job is recorded but the broker cannot be reached ({exc.cause}); it will be sent "
              "when a steps worker starts or reconciliation runs. Do not submit it again.", file=sys.stderr)
        return 0
    print(json.dumps({"id": job.id, "state": job.state, "destination": job.destination}) if args.json else job.id)
    return 0


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        raise SpecError(f"environment.{name}", "must be given as NAME=VALUE")
    return name, value


def _status(args: argparse.Namespace, _extra: list[str]) -> int:
    client = _client()
    job = client.get(args.job_id)
    wait = lifecycle.why_waiting(client.ctx, job)
    if args.json:
        data = job.to_json()
        data["waiting"] = wait.to_json() if wait is not None else None
        data["history"] = [change.to_json() for change in client.history(job.id)]
        print(json.dumps(data, indent=2))
        return 0
    data = job.to_json()
    if wait is not None:
        data["waiting"] = wait.describe()
    keys = ("id", "state", "reused_from", "tool_id", "user", "destination", "external_id", "exit_code", "reason",
            "waiting", "runner_state",
            "waiting_on", "attempt", "wall_time_s", "max_rss_kb", "created_at", "running_at", "finished_at", "job_dir")
    print(fields((key, data[key]) for key in keys
                 if data.get(key) is not None and (key != "attempt" or data[key] > 1)))
    for attempt in data.get("attempts") or []:
        print(escape_controls(f"attempt {attempt['attempt']:<4} on {attempt['destination']}: {attempt['state']} "
                              f"({attempt.get('runner_state') or attempt.get('reason') or 'failed'}), "
                              f"resubmitted because {attempt['resubmit']}"))
    for stream in ("stdout", "stderr"):
        if data.get(stream):
            print(f"--- {stream} (tail)\n{printable(data[stream].rstrip())}")
    return 0


def _provenance(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.lifecycle.reuse import chain

    client = _client()
    found = chain(client.ctx, client.get(args.job_id).id)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for entry in found:
        reused = f"  (reused from {entry['reused_from']})" if entry["reused_from"] else ""
        print(escape_controls(f"{entry['id']}  {entry['tool_id']} {entry['tool_version'] or ''}  "
                              f"{entry['state']}{reused}"))
        for name, output in entry["outputs"].items():
            digest = (output.get("sha256") or "(not hashed)")[:16]
            print(escape_controls(f"  -> {name}  {output['size']} bytes  sha256:{digest}"))
        for item in entry["inputs"]:
            source = f"from {item['from']}" if item["from"] else "(no recorded job)"
            print(escape_controls(f"  <- {item['path']}  {source}"))
    return 0


def _list(args: argparse.Namespace, _extra: list[str]) -> int:
    jobs = _client().list(args.state, args.limit)
    if args.json:
        print(json.dumps([job.to_json() for job in jobs], indent=2))
        return 0
    print_table(["id", "state", "exit", "tool", "destination", "created"],
                [[j.id, j.state, _blank(j.exit_code), j.tool_id, j.destination,
                  j.created_at.strftime("%Y-%m-%d %H:%M:%S")] for j in jobs])
    return 0


def _cancel(args: argparse.Namespace, _extra: list[str]) -> int:
    client = _client()
    job = client.get(args.job_id)
    before = client.cancel(job.id)
    if before in TERMINAL:
        print(f"{job.id} had already ended ({before})")
    else:
        print(f"{job.id} cancelled (was {before})")
    return 0


def _wait(args: argparse.Namespace, _extra: list[str]) -> int:
    # a live bar on the terminal (standard error, so standard output keeps only the result);
    # none with --json or when standard error is not a terminal
    live = not args.json and is_terminal(sys.stderr)
    with JobProgress(sys.stderr, live=live, changes="ends", title="waiting") as progress:
        jobs = _client().wait(args.job_ids, timeout=args.timeout, on_event=progress.event if live else None,
                              on_listening=None if is_terminal(sys.stderr) else _say_listening)
    if args.json:
        print(json.dumps([job.to_json() for job in jobs.values()], indent=2))
    else:
        for job in jobs.values():
            print(f"{job.id} {job.state} exit={_blank(job.exit_code)}")
    return 0 if all(job.state == JobState.OK.value for job in jobs.values()) else 1


def _say_listening(pending: int) -> None:
    """Off a terminal, one line on standard error once `wait` hears the jobs' events (a script
    may then end them, knowing the wait will hear it)."""
    print(f"waiting for {pending} jobs, listening for their events", file=sys.stderr, flush=True)


def _route(args: argparse.Namespace, _extra: list[str]) -> int:
    """The routing decision for a spec, as an admin asks TPV's `dry-run --explain`."""
    from galaxy_tasks.edge import runtime  # builds the Celery app: only for commands that need it
    from galaxy_tasks.policies import MAX_ATTEMPTS
    from galaxy_tasks.spec import parse_json


    ctx = runtime.context()
    spec = parse_json(sys.stdin.read() if str(args.spec) == "-" else args.spec.read_text())
    destination, why, loads = ctx.routing.explain(spec, lambda d: lifecycle.load_of(ctx, d))
    keys = ctx.routing.limit_keys(spec.user, destination.name)
    usage = ctx.store.limit_usage(sorted(keys)) if keys and args.explain else {}
    result: dict[str, Any] = {
        "destination": destination.name, "runner": destination.runner, "queue": destination.queue, "why": why,
        "walltime_s": ctx.routing.walltime_s(destination.name, spec.walltime_s),
        "output_size_bytes": ctx.routing.output_size_bytes(destination.name),
        "limits": [{"key": key, "limit": limit, "used": usage.get(key)} for key, limit in sorted(keys.items())],
        "loads": {name: {"running": load.running, "waiting": load.waiting, "slots": load.slots,
                         "mean_run_s": load.mean_run_s, "expected_wait_s": load.expected_wait_s}
                  for name, load in loads.items()},
        "resubmit": [{"condition": r.condition.text if r.condition else None,
                      "destination": r.destination or destination.name,
                      "delay": r.delay.text if r.delay else None} for r in destination.policy.resubmit],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"destination  {destination.name} (runner {destination.runner}, queue {destination.queue})")
    if args.explain:
        print(f"why          {why.split('; the shortest expected wait')[0] if loads else why}")
        for name, load in loads.items():
            print(f"{'chosen' if name == destination.name else 'candidate':12} {name}: {load.describe()}")
        for name in ("walltime_s", "output_size_bytes"):
            if result[name] is not None:
                print(f"{name:12} {result[name]}")
        for limit in result["limits"]:
            print(f"limit        {limit['key']}: {limit['used']} of {limit['limit']} places taken")
        for rule in result["resubmit"]:
            print(f"resubmit     on a failure, if {rule['condition'] or '(any)'} -> {rule['destination']}"
                  f"{' after ' + rule['delay'] + ' s' if rule['delay'] else ''} (at most {MAX_ATTEMPTS} attempts)")
    return 0


def _events(args: argparse.Namespace, _extra: list[str]) -> int:
    """Print job events: the current state of the latest jobs (or of those named), then,
    with --follow, each event as it is heard."""
    from galaxy_tasks import events
    from galaxy_tasks.edge.listen import JobEvents

    client = _client()
    wanted = {client.get(job_id).id for job_id in args.job_ids}

    def show(item: dict) -> None:
        if args.json:
            print(json.dumps(item, sort_keys=True), flush=True)
        else:
            extra = " ".join(f"{key}={item[key]}" for key in ("exit_code", "signal", "runner_state", "reason")
                             if item.get(key) is not None)
            print(escape_controls(f"{item['state']:10} {item['job_id']}  seq={item['seq']}  {item.get('tool_id') or ''}"
                                  f"{'  ' + extra if extra else ''}"), flush=True)

    with JobEvents() as heard:
        jobs = client.ctx.store.jobs(wanted).values() if wanted else reversed(client.list(limit=args.limit))
        for job in jobs:
            show(events.state_event(job))
        if args.follow:
            print("listening for job events (Ctrl-C to stop)", file=sys.stderr, flush=True)
        while args.follow:
            for item in heard.next(3600):
                if not wanted or item.get("job_id") in wanted:
                    show({key: value for key, value in item.items()
                          if key not in ("type", "hostname", "timestamp", "utcoffset", "pid", "clock",
                                         "local_received")})
    return 0


def _worker(args: argparse.Namespace, extra: list[str]) -> int:
    from galaxy_tasks.edge import runtime  # builds the Celery app: only for commands that need it

    ctx = runtime.context()
    ctx.settings.home.mkdir(parents=True, exist_ok=True)
    from galaxy_tasks.edge.app import app

    if args.queues:
        _end_worker(app.start(["worker", "-Q", args.queues, *extra]))
    # Every queue the configuration knows: the steps and local ones here, each holding
    # runner's in a supervised worker process of its own (see galaxy_tasks/child_workers.py).
    from galaxy_tasks import child_workers

    queues, held = _queues_by_worker(ctx)
    node, loglevel = _option(extra, "-n", "--hostname"), _option(extra, "-l", "--loglevel")
    supervisor = child_workers.Supervisor({
        runner: child_workers.command(runner, held_queues, child_workers.node_name(node, runner), loglevel)
        for runner, held_queues in held.items()
    })
    for runner, held_queues in held.items():
        print(f"galaxy-tasks: queues {', '.join(held_queues)} ({runner}) are served by a child process "
              f"`celery -A {child_workers.holder_app(runner)} worker`", file=sys.stderr)
    from celery import signals

    signals.celeryd_after_setup.connect(lambda **_: supervisor.start(), weak=False)  # logging is set up
    try:
        code = app.start(["worker", "-Q", ",".join(queues), *extra])
    finally:
        supervisor.stop()
    _end_worker(code)


def _end_worker(code: int | None) -> NoReturn:
    """Exit as soon as the worker has shut down, with its exit code (`worker_main` drops it).
    The interpreter's last collection of a worker's heap costs seconds of CPU, many more on a
    loaded host, where a supervisor's stop timeout then kills the worker; it frees nothing an
    exit does not."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _queues_by_worker(ctx: context.Context) -> tuple[list[str], dict[str, list[str]]]:
    """The queues a plain worker serves (the steps and the local runner's), and those of
    each runner that must be held in one process (DRMAA sessions, Mesos frameworks)."""
    plain = {ctx.settings.steps_queue, ctx.settings.ends_queue}
    held: dict[str, set[str]] = {}
    for destination in ctx.routing.destinations.values():
        if destination.runner_class.holder is not None:
            held.setdefault(destination.runner, set()).add(destination.queue)
        else:
            plain.add(destination.queue)
    return sorted(plain), {runner: sorted(queues) for runner, queues in sorted(held.items())}


def _option(extra: list[str], *names: str) -> str | None:
    """The value of a Celery option among the passed-through arguments (`-n X`, `--hostname=X`)."""
    for index, item in enumerate(extra):
        for name in names:
            if item == name and index + 1 < len(extra):
                return extra[index + 1]
            if item.startswith(name + "=") or (len(name) == 2 and item.startswith(name) and len(item) > 2):
                return item.split("=", 1)[1] if "=" in item else item[2:]
    return None


def _beat(args: argparse.Namespace, extra: list[str]) -> int:
    from galaxy_tasks.edge.app import app

    config.load().home.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule there
    app.start(["beat", *extra])
    return 0


def _staging_server(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.logs import event, install
    from galaxy_tasks.staging import server
    from galaxy_tasks.store import Store

    settings = config.load()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install(settings.log_level)
    serving = server.build(settings, Store(settings.database_url, settings.check_after).job)
    event(logging.getLogger("galaxy_tasks.staging"), "staging_server_listening", address=settings.staging_listen,
          https=bool(settings.staging_cert))
    try:
        serving.serve_forever()
    finally:
        serving.server_close()
    return 0


def _db(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.store import schema

    url = config.load().database_url
    if args.action == "upgrade":
        schema.upgrade(url)
    print(f"schema at revision {schema.current(url)} ({redact(url)})")
    return 0


def _bench(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.bench import main as bench_main

    return bench_main(jobs=args.jobs, latency_jobs=args.latency_jobs, workers=args.workers, as_json=args.json,
                      rounds=args.rounds, ends_worker=args.ends_worker)


def _config(args: argparse.Namespace, _extra: list[str]) -> int:
    if args.runner_params:
        from galaxy_tasks.runners import params_markdown

        print(params_markdown())
        return 0
    for name, (default, meaning) in config.VARIABLES.items():
        import os

        value = os.environ.get(config.PREFIX + name)
        shown = redact(value) if value is not None else f"{default} (default)"
        if value and name in config.SECRET_VARIABLES:
            shown = "(set, hidden)"
        print(f"{config.PREFIX}{name:20} {shown}\n    {meaning}")
    return 0


def _schema(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks import schemas

    if args.write is not None:
        for path in schemas.write(args.write):
            print(path)
        return 0
    if args.name is None:
        raise ValueError("name a schema: spec, event or job-conf (or --write DIR)")
    sys.stdout.write(schemas.text(args.name))
    return 0


def _blank(value: object) -> str:
    return "" if value is None else str(value)


if __name__ == "__main__":
    sys.exit(main())
