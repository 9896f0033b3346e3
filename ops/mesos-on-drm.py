#!/usr/bin/env python3
"""Create a Mesos cluster inside an existing queueing system (Grid Engine, or any DRM with
DRMAA): a master and N agents run as DRM jobs, submitted through galaxy-tasks' own DRMAA
runner; the master's address is the cluster's MESOS_URL.

    ops/mesos-on-drm.py up --dir /shared/mesos-1 --agents 4 \
        [--master-cmd 'mesos-master --ip={ip} --port={port} ...'] [--agent-cmd '...'] \
        [--port 5050] [--master-native '-l h_rt=24:00:00'] [--agent-native '-pe smp 8'] \
        [--env NAME=VALUE ...] [--timeout 600]
        -> prints the master's address (host:port), nothing else, on stdout:
           export GALAXY_TASKS_MESOS_URL=$(ops/mesos-on-drm.py up --dir ... --agents 4)
    ops/mesos-on-drm.py status --dir /shared/mesos-1      # members, DRM ids, states
    ops/mesos-on-drm.py down --dir /shared/mesos-1        # cancel every member

How: `--dir` must be on a file system the DRM's hosts share. Each member is a job
directory there (job.sh, as every galaxy-tasks job), whose command runs this script's
`member` step on the execution host:

- the master member picks its port (`--port`; 0: any free one), starts `--master-cmd`,
  waits until that port accepts connections, then writes `host:port` to `<dir>/master.address`
  (removed again when the master ends);
- an agent member waits for `<dir>/master.address`, then replaces itself with `--agent-cmd`.

`up` waits for the address and for the agents to show as active in the master's
`/master/state`, and prints the address; if they do not come up within `--timeout`, it
cancels what it submitted and exits non-zero. A second `up` on a running cluster prints the
address again; after `down` (or when every member has ended) it starts a new cluster in the
same directory. DRM jobs are named `gt-<name>-master`, `gt-<name>-agent<i>` (`--name`, default
`mesos-<basename of dir>`).

Placeholders in the commands: {ip} {host} {port} (the member's own; for an agent a free
port), {master} (the master's host:port, agents only), {work_dir} (a local scratch
directory on the execution host), {cpus} (the slots the DRM gave the job: $NSLOTS or
$SLURM_CPUS_ON_NODE, else the host's cores), {index} (agent number), {python}
(the interpreter running this script). Members get PATH from this shell, plus `--env`.

DRMAA is loaded in this process only for up/status/down: it needs DRMAA_LIBRARY_PATH,
SGE_ROOT/SGE_CELL (ops/sge-up.sh writes them to an env.sh), and GLIBC_TUNABLES set before
Python starts, which this script arranges by re-executing itself when it is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MASTER_CMD = ("mesos-master --ip={ip} --port={port} --hostname={host} --work_dir={work_dir} "
                      "--quorum=1 --cluster={name}")
DEFAULT_AGENT_CMD = ("mesos-agent --master={master} --ip={ip} --port={port} --hostname={host} "
                     "--work_dir={work_dir} --resources=cpus:{cpus}")
STATE = "cluster.json"
ADDRESS = "master.address"


def log(message: str) -> None:
    print(f"[mesos-on-drm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the cluster's record in --dir ---------------------------------------------------------

def load(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / STATE).read_text())
    except FileNotFoundError:
        return None


def save(directory: Path, cluster: dict[str, Any]) -> None:
    tmp = directory / (STATE + ".tmp")
    tmp.write_text(json.dumps(cluster, indent=2) + "\n")
    os.replace(tmp, directory / STATE)


def read_address(directory: Path) -> str | None:
    try:
        return (directory / ADDRESS).read_text().strip() or None
    except FileNotFoundError:
        return None


# -- DRM side (up, status, down) --------------------------------------------------------------

def drm_runner(report: Any = None, native: str = "") -> Any:
    """A DRMAA runner (every one of this process shares its one session)."""
    sys.path.insert(0, str(ROOT))
    from galaxy_tasks.runners.drmaa import DrmaaRunner

    return DrmaaRunner({"native_specification": native}, report or (lambda completion: None))


def tracked(member: dict[str, Any]) -> Any:
    from galaxy_tasks.runners.base import Tracked

    return Tracked(member["job_id"], member["external_id"], Path(member["job_dir"]))


def active_members(runner: Any, cluster: dict[str, Any] | None) -> dict[str, Any]:
    """What the DRM says of each submitted member: None while queued/running."""
    if not cluster:
        return {}
    members = [m for m in cluster["members"] if m.get("external_id")]
    ended = runner.status([tracked(m) for m in members]) if members else {}
    return {m["job_id"]: ended.get(m["job_id"]) for m in members}


def up(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    from galaxy_tasks import jobdir
    from galaxy_tasks.runners.base import Launch

    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    ended: dict[str, Any] = {}
    lock = threading.Condition()

    def report(completion: Any) -> None:
        with lock:
            ended[completion.job_id] = completion
            lock.notify_all()

    runner = drm_runner(report)
    by_native: dict[str, Any] = {}  # a runner per native specification: master and agents may differ
    fresh = False
    try:
        cluster = load(directory)
        states = active_members(runner, cluster)
        if cluster and any(state is None for state in states.values()):
            log(f"cluster {cluster['name']} is already up ({len(states)} members); not submitting again")
        else:
            fresh = True
            cluster = new_cluster(args, directory)
            env = {"PATH": os.environ.get("PATH", jobdir.DEFAULT_PATH), **dict(args.env)}
            for member in cluster["members"]:
                root = Path(member["job_dir"])
                shutil.rmtree(root, ignore_errors=True)  # a fresh job dir: job.sh claims it once
                command = " ".join(shlex.quote(str(part)) for part in [
                    "exec", cluster["python"], Path(__file__).resolve(), "member", "--dir", directory,
                    "--role", member["role"], "--index", member["index"]])
                job_env = jobdir.job_environment(jobdir.JobDir(root), cores=1, memory_mb=None, spec_env=env,
                                                 destination_env={}, mesos_url="", job_id=member["job_id"])
                created = jobdir.create(root, command, job_env, None)
                native = args.master_native if member["role"] == "master" else args.agent_native
                launch = Launch(job_id=member["job_id"], job_dir=root, script=created.script)
                if native not in by_native:
                    by_native[native] = drm_runner(report, native) if native else runner
                member["external_id"] = by_native[native].submit(launch)
                save(directory, cluster)
                log(f"submitted {member['role']} {member['index']}: DRM job {member['external_id']} "
                    f"(gt-{member['job_id']})")
        address = wait_for_master(directory, cluster, ended, lock, args.timeout)
        wait_for_agents(address, len([m for m in cluster["members"] if m["role"] == "agent"]),
                        cluster, ended, lock, args.timeout)
    except BaseException:
        if fresh:  # leave no half-made cluster behind (the job directories stay, for their logs)
            log("cancelling what this run submitted")
            cancel_all(runner, cluster, args.timeout)
        raise
    finally:
        for other in by_native.values():
            if other is not runner:
                other.close()
        runner.close()  # the DRMAA session ends; the cluster's jobs do not
    print(address, flush=True)
    return 0


def new_cluster(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    for stale in (directory / ADDRESS,):
        stale.unlink(missing_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", args.name or f"mesos-{directory.name}")
    members = [{"role": "master", "index": 0, "job_id": f"{name}-master", "job_dir": str(directory / "master")}]
    members += [{"role": "agent", "index": i, "job_id": f"{name}-agent{i}", "job_dir": str(directory / f"agent{i}")}
                for i in range(args.agents)]
    cluster = {"name": name, "master_cmd": args.master_cmd, "agent_cmd": args.agent_cmd, "port": args.port,
               "python": args.python, "timeout": args.timeout, "members": members, "created_at": time.time()}
    save(directory, cluster)
    return cluster


def _master_failed(cluster: dict[str, Any], ended: dict[str, Any]) -> str | None:
    master = cluster["members"][0]
    completion = ended.get(master["job_id"])
    if completion is None:
        return None
    from galaxy_tasks.jobdir import JobDir

    job_dir = JobDir(Path(master["job_dir"]))
    return (f"the master's DRM job {master['external_id']} ended (exit code {completion.exit_code}, "
            f"{completion.reason or 'no reason given'}); its stderr:\n{job_dir.tail('stderr', 4000)}")


def wait_for_master(directory: Path, cluster: dict[str, Any], ended: dict[str, Any], lock: threading.Condition,
                    timeout: float) -> str:
    """The address file appears on the shared file system when the master listens."""
    deadline = time.monotonic() + timeout
    while True:
        address = read_address(directory)
        if address:
            log(f"master listening at {address}")
            return address
        with lock:
            failed = _master_failed(cluster, ended)
            if failed:
                raise SystemExit(f"mesos-on-drm: {failed}")
            if time.monotonic() > deadline:
                raise SystemExit(f"mesos-on-drm: no master address in {directory / ADDRESS} after {timeout:.0f} s "
                                 "(is the master's DRM job still queued? see `status`)")
            lock.wait(0.5)


def wait_for_agents(address: str, count: int, cluster: dict[str, Any], ended: dict[str, Any],
                    lock: threading.Condition, timeout: float) -> None:
    """Until the master lists `count` active agents (its /master/state, as Mesos serves it)."""
    deadline = time.monotonic() + timeout
    active = 0
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/master/state", timeout=10) as response:
                state = json.load(response)
            active = sum(1 for agent in state.get("slaves", []) if agent.get("active"))
        except (OSError, ValueError) as exc:
            log(f"master state not readable yet: {exc}")
        if active >= count:
            log(f"{active} agent(s) active")
            return
        with lock:
            failed = _master_failed(cluster, ended)
            gone = [m for m in cluster["members"][1:] if m["job_id"] in ended]
            if failed or gone:
                raise SystemExit(f"mesos-on-drm: {failed or 'agent DRM job(s) ended: ' + ', '.join(m['external_id'] for m in gone)}")
            if time.monotonic() > deadline:
                raise SystemExit(f"mesos-on-drm: {active} of {count} agents active after {timeout:.0f} s")
            lock.wait(1.0)


def status(args: argparse.Namespace) -> int:
    directory = args.dir.resolve()
    cluster = load(directory)
    if cluster is None:
        print(f"no cluster in {directory}")
        return 1
    runner = drm_runner()
    try:
        states = active_members(runner, cluster)
    finally:
        runner.close()
    print(f"cluster {cluster['name']}  MESOS_URL={read_address(directory) or '(none)'}")
    for member in cluster["members"]:
        completion = states.get(member["job_id"])
        state = "active" if completion is None and member.get("external_id") else (
            f"ended (exit {completion.exit_code})" if completion else "not submitted")
        print(f"  {member['role']:6} {member['index']:>3}  DRM job {member.get('external_id') or '-':>8}  {state}")
    return 0 if all(states.get(m["job_id"]) is None for m in cluster["members"]) else 3


def down(args: argparse.Namespace) -> int:
    directory = args.dir.resolve()
    cluster = load(directory)
    if cluster is None:
        print(f"no cluster in {directory}", file=sys.stderr)
        return 0
    runner = drm_runner()
    try:
        cancel_all(runner, cluster, args.timeout)
    finally:
        runner.close()
    log(f"cluster {cluster['name']} is down")
    return 0


def cancel_all(runner: Any, cluster: dict[str, Any], timeout: float) -> None:
    """Cancel every submitted member, agents first, and wait until the DRM lists none."""
    for member in [m for m in reversed(cluster["members"]) if m.get("external_id")]:
        runner.cancel(tracked(member))
        log(f"cancelled {member['role']} {member['index']} (DRM job {member['external_id']})")
    deadline = time.monotonic() + timeout
    while any(state is None for state in active_members(runner, cluster).values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"mesos-on-drm: members still listed by the DRM after {timeout:.0f} s")
        time.sleep(1)  # a bounded wait for the DRM to finish killing them
    directory = Path(cluster["members"][0]["job_dir"]).parent
    (directory / ADDRESS).unlink(missing_ok=True)


# -- on the execution host ----------------------------------------------------------------

def member(args: argparse.Namespace) -> int:
    directory = args.dir.resolve()
    cluster = load(directory)
    assert cluster is not None, f"no {STATE} in {directory}"
    host = socket.getfqdn()
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = host
    cpus = os.environ.get("NSLOTS") or os.environ.get("SLURM_CPUS_ON_NODE") or str(os.cpu_count() or 1)
    work_dir = Path(os.environ.get("MESOS_ON_DRM_SCRATCH", "/tmp")) / f"{cluster['name']}-{args.role}{args.index}"
    work_dir.mkdir(parents=True, exist_ok=True)
    values = dict(ip=ip, host=host, cpus=cpus, work_dir=work_dir, index=args.index, name=cluster["name"],
                  python=sys.executable)
    if args.role == "master":
        return run_master(directory, cluster, values)
    return run_agent(directory, cluster, values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def run_master(directory: Path, cluster: dict[str, Any], values: dict[str, Any]) -> int:
    port = int(cluster["port"]) or free_port()
    command = cluster["master_cmd"].format(port=port, master="", **values)
    print(f"master: {command}", flush=True)
    # in the job's process group, which is what the DRM signals (qdel, limits, -notify)
    child = subprocess.Popen(["/bin/sh", "-c", command])
    address = f"{values['ip']}:{port}"
    deadline = time.monotonic() + float(cluster["timeout"])
    while child.poll() is None:
        try:
            socket.create_connection((values["ip"], port), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                child.terminate()
                break
            time.sleep(0.2)
    if child.poll() is None:
        tmp = directory / (ADDRESS + ".tmp")
        tmp.write_text(address + "\n")
        os.replace(tmp, directory / ADDRESS)
        print(f"master listening at {address}", flush=True)
    code = child.wait()
    if read_address(directory) == address:
        (directory / ADDRESS).unlink(missing_ok=True)
    print(f"master exited with {code}", flush=True)
    return code if code >= 0 else 128 - code


def run_agent(directory: Path, cluster: dict[str, Any], values: dict[str, Any]) -> int:
    deadline = time.monotonic() + float(cluster["timeout"])
    while not (address := read_address(directory)):
        if time.monotonic() > deadline:
            print(f"no master address in {directory / ADDRESS} after {cluster['timeout']} s", file=sys.stderr)
            return 1
        time.sleep(1)  # a file on a shared file system: nothing to wait on but its appearance
    command = cluster["agent_cmd"].format(master=address, port=free_port(), **values)
    print(f"agent {values['index']}: {command}", flush=True)
    os.execv("/bin/sh", ["/bin/sh", "-c", command])
    return 127  # not reached


# -- command line -------------------------------------------------------------------------

def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env wants NAME=VALUE, not {item!r}")
    return name, value


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Create a Mesos cluster inside a queueing system (via DRMAA)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="submit a master and N agents; print the master's host:port")
    p_up.add_argument("--dir", type=Path, required=True, help="the cluster's directory, on a shared file system")
    p_up.add_argument("--agents", type=int, default=2)
    p_up.add_argument("--name", help="names the DRM jobs (default mesos-<basename of --dir>)")
    p_up.add_argument("--master-cmd", default=DEFAULT_MASTER_CMD)
    p_up.add_argument("--agent-cmd", default=DEFAULT_AGENT_CMD)
    p_up.add_argument("--port", type=int, default=5050, help="the master's port (0: any free port)")
    p_up.add_argument("--master-native", default="", help="DRM options of the master's job")
    p_up.add_argument("--agent-native", default="", help="DRM options of each agent's job")
    p_up.add_argument("--env", type=_pair, action="append", default=[], help="NAME=VALUE for every member")
    p_up.add_argument("--python", default=sys.executable, help="the interpreter members run this script with")
    p_up.add_argument("--timeout", type=float, default=600, help="seconds to wait for the master and agents")
    for name, help_text in (("status", "list the members and their DRM state"), ("down", "cancel every member")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--dir", type=Path, required=True)
        p.add_argument("--timeout", type=float, default=120)
    p_member = sub.add_parser("member", help=argparse.SUPPRESS)  # what each DRM job runs
    p_member.add_argument("--dir", type=Path, required=True)
    p_member.add_argument("--role", choices=("master", "agent"), required=True)
    p_member.add_argument("--index", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command != "member":
        sys.path.insert(0, str(ROOT))
        from galaxy_tasks.runners.drmaa.tls import restart_with_static_tls

        restart_with_static_tls()  # libdrmaa's TLS only fits when this is set at start
    return {"up": up, "status": status, "down": down, "member": member}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
