"""`galaxy-tasks workflow submit|run|status|list|pause|resume|cancel|rerun`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from galaxy_tasks import yamlconf
from galaxy_tasks.arguments import embedded_options
from galaxy_tasks.render import JobProgress, counts_text, fields, is_terminal, print_table

if TYPE_CHECKING:
    from galaxy_tasks.client import Client


def add_commands(sub: Any) -> None:
    workflow = sub.add_parser("workflow", help="submit and follow workflows (docs/workflows.md)")
    actions = workflow.add_subparsers(dest="action", required=True)

    submit = actions.add_parser("submit", help="submit a workflow (YAML or JSON) and print its id")
    submit.add_argument("file", type=Path)
    submit.add_argument("--json", action="store_true")
    submit.set_defaults(handler=_submit)

    run = actions.add_parser("run", help="run a workflow to its end in this process (embedded mode)")
    run.add_argument("file", type=Path)
    embedded_options(run)
    run.set_defaults(handler=_run)

    status = actions.add_parser("status", help="a workflow's state, and each step's count of elements per state")
    status.add_argument("workflow_id")
    status.add_argument("--json", action="store_true")
    status.add_argument("--follow", action="store_true", help="show a progress bar until the workflow ends")
    status.set_defaults(handler=_status)

    listing = actions.add_parser("list", help="list workflows, newest first")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    for name, text in (("pause", "start no new step (running ones finish)"), ("resume", "go on after a pause"),
                       ("cancel", "cancel the workflow and its running jobs"),
                       ("rerun", "run again what failed or was cancelled, and what depends on it")):
        action = actions.add_parser(name, help=text)
        action.add_argument("workflow_id")
        action.set_defaults(handler=_control, verb=name)


def _client() -> Client:
    from galaxy_tasks.client import Client

    return Client()


def _document(path: Path) -> Any:
    return yamlconf.read(path)


def _submit(args: argparse.Namespace, _extra: list[str]) -> int:
    workflow = _client().submit_workflow(_document(args.file))
    print(json.dumps({"id": workflow.id, "name": workflow.name, "state": workflow.state}) if args.json
          else workflow.id)
    return 0


def _run(args: argparse.Namespace, _extra: list[str]) -> int:
    from galaxy_tasks.client import Client
    from galaxy_tasks.edge.embedded import embedded_worker

    document = _document(args.file)
    with embedded_worker(concurrency=args.concurrency):
        from galaxy_tasks.edge import runtime  # builds the Celery app: only for commands that need it

        client = Client(runtime.context())
        workflow = client.submit_workflow(document)
        print(f"submitted  {workflow.id}  {workflow.name}", file=sys.stderr)
        ended = _follow(client, workflow.id, args.timeout, sys.stderr)
        show(client.workflow_status(workflow.id), sys.stdout)
    return 0 if ended.state == "ok" else 1


def _follow(client: Client, workflow_id: str, timeout: float | None, out: TextIO) -> Any:
    live = is_terminal(out)
    with JobProgress(out, live=live, changes="none", title="elements") as progress:
        return client.wait_workflow(workflow_id, timeout, on_states=progress.start)


def _status(args: argparse.Namespace, _extra: list[str]) -> int:
    client = _client()
    if args.follow:
        _follow(client, client.workflow(args.workflow_id).id, None, sys.stderr)
    status = client.workflow_status(args.workflow_id)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        show(status, sys.stdout)
    return 0


def show(status: dict[str, Any], out: TextIO) -> None:
    """The workflow's fields, then one row per step: its elements and their states."""
    print(fields((key, status[key]) for key in ("id", "name", "state", "reason", "user", "created_at")
                 if status.get(key) is not None), file=out)
    print(f"elements: {_counts(status['states'])}", file=out)
    print_table(["step", "elements", "needs", "states"],
                [[step["name"], str(step["elements"]), ", ".join(f"{n} ({how})" for n, how in step["needs"].items()),
                  _counts(step["states"])] for step in status["steps"]], out)


def _counts(states: dict[str, int]) -> str:
    expanded = {f"{state}-{i}": state for state, count in states.items() for i in range(count)}
    return counts_text(expanded) or "-"


def _list(args: argparse.Namespace, _extra: list[str]) -> int:
    workflows = _client().workflows(args.limit)
    if args.json:
        print(json.dumps([{"id": w.id, "name": w.name, "state": w.state, "reason": w.reason,
                           "created_at": w.created_at.isoformat()} for w in workflows], indent=2))
        return 0
    print_table(["id", "name", "state", "created"],
                [[w.id, w.name, w.state, w.created_at.strftime("%Y-%m-%d %H:%M:%S")] for w in workflows])
    return 0


def _control(args: argparse.Namespace, _extra: list[str]) -> int:
    client = _client()
    workflow = client.workflow(args.workflow_id)
    if args.verb == "pause":
        client.pause_workflow(workflow.id)
        print(f"{workflow.id} paused")
    elif args.verb == "resume":
        client.resume_workflow(workflow.id)
        print(f"{workflow.id} resumed")
    elif args.verb == "cancel":
        print(f"{workflow.id} cancelled ({client.cancel_workflow(workflow.id)} jobs cancelled)")
    else:
        print(f"{workflow.id} rerun ({client.rerun_workflow(workflow.id)} jobs started)")
    return 0
