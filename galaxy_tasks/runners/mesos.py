"""Mesos runner: a pymesos framework (v1 HTTP scheduler API) running each job as one command
task, `/bin/sh <job_dir>/job.sh`, whose Mesos task id is the job's external name.

Events, not loops: offers, status updates and reconciliation answers arrive on the pymesos
driver's own IO thread and are handled there; nothing polls. Reliability rests on Mesos's:

- Status updates are acknowledged explicitly, and only after `report(completion)` returned.
  The mesos runner therefore needs `report` to be synchronous and durable (the completion is
  in the database, or an equivalent durable queue, when it returns); if it raises, the update
  is not acknowledged and Mesos delivers it again later. `report` runs on the driver thread,
  so it should be quick (one transaction), and may be called more than once for a job.
- The framework has `checkpoint=True` and a `failover_timeout`; its id is persisted in
  `framework_id_file`, so a restarted worker re-subscribes as the same framework, its tasks
  keep running meanwhile, and `recover(jobs)`/`status(jobs)` reconcile them.
- `close()` stops the driver with failover: the framework is never torn down by us.

A task lost before it started (no `claim` file in its job dir: `job.sh` claims the job
before running anything) can safely run again. So a task lost with its agent, or launched on
a rescinded offer (TASK_LOST/DROPPED with REASON_INVALID_OFFERS), goes back to the pending
queue (agent loss: only if `on_agent_lost` is `requeue`); a task lost after it started is
reported with the exit code its job dir recorded, or as failed.

A job that names `run_as` runs as its user, the way Mesos runs a task as someone: the task's
`command.user`, which the agent switches to before it runs the command. The framework's
user may ask for any user, so the privileged helper (`run_as_command`) decides first: it
refuses the job (root, a system user, a user outside its group, a directory that is not the
job's) or hands the job's directory to the user; the directory comes back once the task's end
is known, before the end is reported. The task's environment asks job.sh for umask 027, so
what the job leaves stays readable by the worker's group (docs/security.md).

Params: see `MesosParams`.
"""
from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from galaxy_tasks.errors import RunnerError, RunnerUnavailable
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.names import external_name, job_id_of
from galaxy_tasks.runners.asuser import call_helper, give_back, handed_over, run_as_command_param
from galaxy_tasks.runners.base import Completion, Launch, Report, Runner, Tracked
from galaxy_tasks.runners.params import param

log = logging.getLogger(__name__)

TERMINAL = frozenset({
    "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
    "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN",
})
#: the task (or what Mesos knew of it) vanished: whether it ran is read from the job dir
LOST = frozenset({"TASK_LOST", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"})
DONE_MEMORY = 10000  # completions kept to answer status() after the event was reported
#: a terminal update's reason, in the words of Galaxy's resubmit conditions: the task's
#: max_completion_time (its walltime) or its container's memory limit was reached
RUNNER_STATES = {"REASON_MAX_COMPLETION_TIME_REACHED": "walltime_reached",
                 "REASON_CONTAINER_LIMITATION_MEMORY": "memory_limit_reached"}
_EXIT_STATUS = re.compile(r"exited with status (\d+)")


class MesosUnavailable(RunnerUnavailable):
    """Transient, not the job's fault (not connected, or fenced by another scheduler with our
    framework id): retry the step, preferably elsewhere; unlike RunnerError it must not fail
    the job."""


def import_pymesos() -> Any:
    """Import pymesos, which must happen first in the main thread: at import it installs a
    SIGINT handler, and when its driver thread dies (master unreachable for
    `connect_timeout_s`, HTTP error on subscription) it re-raises that error in the main
    thread. A worker hosting this runner should call this at start-up and let such an
    error end the process (its supervisor restarts it; recovery does the rest)."""
    try:
        import pymesos
    except ImportError as exc:
        raise RunnerError("pymesos is not installed: run ops/install-mesos-extra.sh") from exc
    except ValueError as exc:  # signal.signal() outside the main thread
        raise RunnerError("pymesos must first be imported in the main thread "
                          "(call galaxy_tasks.runners.mesos.import_pymesos() at start-up)") from exc
    return pymesos


@dataclass
class _Job:
    job_id: str
    task_id: str
    job_dir: Path | None
    launch: Launch | None  # None for a job followed again after a restart: cannot requeue
    state: str | None = None  # last Mesos state; None: unknown, being reconciled
    agent_id: str | None = None
    started_at: float | None = None
    cancelled: bool = False

    @property
    def claimed(self) -> bool:
        return self.job_dir is not None and JobDir(self.job_dir).claimed()


@dataclass(frozen=True)
class MesosParams:
    master: str = param("127.0.0.1:5050", doc='the Mesos master, "host:port" or "zk://..."')
    framework_id_file: str | None = param(None, doc="where the framework id is kept (the Mesos worker sets "
                                                    "$GALAXY_TASKS_HOME/mesos/<destination>.framework_id)")
    framework_name: str = param("galaxy-tasks", doc="the framework's name in Mesos")
    user: str | None = param(None, doc="the user tasks run as (default: the worker's)")
    role: str | None = param(None, doc="the framework's role")
    failover_timeout: float = param(7 * 86400.0, minimum=0, doc="seconds Mesos keeps the framework and its "
                                                                 "tasks while no scheduler is subscribed")
    refuse_seconds: float = param(5.0, minimum=0, doc="decline filter: how long a declined offer stays away")
    default_memory_mb: int = param(128, minimum=1, doc="memory of a task whose job asks for none")
    on_agent_lost: str = param("requeue", choices=("requeue", "fail"), doc="a task lost with its agent before "
                                                                          "it started: run it again, or fail it")
    principal: str | None = param(None, doc="authentication principal")
    secret: str | None = param(None, doc="authentication secret")
    connect_timeout_s: float = param(86400.0, minimum=1, doc="how long pymesos tries to reach the master "
                                                             "before the worker stops (see import_pymesos)")
    register_timeout_s: float = param(30.0, minimum=0, doc="how long the Mesos worker waits for the registration "
                                                           "at start (the driver keeps trying after that)")
    run_as_command: str | None = run_as_command_param()


class MesosRunner(Runner):
    """Runs jobs as Mesos command tasks through one long-lived pymesos framework."""

    name = "mesos"
    Params = MesosParams
    params: MesosParams
    holder = "workers.mesos"
    durable_report = True  # status updates are acknowledged to Mesos once report returned
    runs_as_user = True

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        super().__init__(params, report, destination=destination, host=host)
        pymesos = import_pymesos()
        p = self.params
        self.master = p.master
        self.refuse_seconds = p.refuse_seconds
        self.default_memory_mb = p.default_memory_mb
        self.on_agent_lost = p.on_agent_lost
        self.framework_id_file = Path(p.framework_id_file) if p.framework_id_file else None
        self._lock = threading.RLock()
        self._offer_lock = threading.Lock()  # serializes SUPPRESS/REVIVE decisions + calls
        self._pending: OrderedDict[str, _Job] = OrderedDict()
        self._active: dict[str, _Job] = {}
        self._done: OrderedDict[str, Completion] = OrderedDict()
        self._suppressed = False
        self._registered = threading.Event()
        self._closed = False
        self._fenced: str | None = None  # why this runner stopped for good
        self.framework_id: str | None = self._read_framework_id()
        framework: dict[str, Any] = {
            "user": p.user or getpass.getuser(),
            "name": p.framework_name,
            "hostname": socket.gethostname(),
            "failover_timeout": p.failover_timeout,
            "checkpoint": True,
        }
        if p.role:
            framework["role"] = p.role
        if self.framework_id:
            framework["id"] = {"value": self.framework_id}
        self._driver = pymesos.MesosSchedulerDriver(
            _Scheduler(self), framework, self.master,
            implicit_acknowledgements=False,
            principal=p.principal, secret=p.secret,
            timeout=p.connect_timeout_s,
            failover=True,  # however the driver stops (even its thread dying), never TEARDOWN
        )
        self._driver.start()
        self._driver_thread = self._driver._io_thread  # pymesos has no public handle on it

    # ---- Runner interface ------------------------------------------------------------
    def submit(self, launch: Launch) -> str:
        self._check_fenced()
        if launch.run_as is not None:
            self._hand_over(launch)
        tid = launch.external_name
        job = _Job(launch.job_id, tid, Path(launch.job_dir), launch)
        with self._lock:
            if tid in self._pending or tid in self._active:
                known = self._active.get(tid)
                if known is not None and known.launch is None:
                    known.launch = launch  # followed since a restart: now it can be requeued
                return tid  # already queued or known to Mesos: never a second copy
            self._done.pop(tid, None)
            if job.claimed:  # an earlier copy started: follow it instead of launching again
                self._active[tid] = job
                follow = True
            else:
                self._pending[tid] = job
                follow = False
        if follow:
            self._reconcile([tid])
        else:
            self._sync_offers()
        return tid

    def cancel(self, tracked: Tracked) -> None:
        self._check_fenced()
        tid = tracked.external_id or external_name(tracked.job_id)
        with self._lock:
            if tid in self._done:
                return  # already ended and reported
            queued = self._pending.pop(tid, None)
            if queued is None:  # known or not, Mesos answers the kill with an update
                job = self._active.setdefault(tid, _Job(tracked.job_id, tid, tracked.job_dir, None))
                job.cancelled = True
        if queued is not None:
            completion = Completion(queued.job_id, reason="cancelled before it was launched",
                                    external_id=tid, source="mesos")
            if not self._finish(queued, completion):
                raise MesosUnavailable("could not report the cancelled job")
            return
        if not self._driver.connected:
            raise MesosUnavailable("not connected to the Mesos master")
        self._call("killTask", {"value": tid})

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        result: dict[str, Completion | None] = {}
        unknown: list[str] = []
        with self._lock:
            for tracked in jobs:
                tid = tracked.external_id or external_name(tracked.job_id)
                result[tracked.job_id] = self._done.get(tid)
                if tid not in self._done and tid not in self._pending and tid not in self._active:
                    self._active[tid] = _Job(tracked.job_id, tid, tracked.job_dir, None)
                    unknown.append(tid)
        if unknown:  # the answers arrive as status updates and are reported from there
            self._reconcile(unknown)
        return result

    def close(self) -> None:
        """Stop the driver with failover: Mesos keeps the framework and its tasks for
        `failover_timeout`, so the next process re-subscribes and finds them."""
        self._closed = True
        self._driver.stop(failover=True)
        self._driver.join()

    def _hand_over(self, launch: Launch) -> None:
        """The job's directory to its user, through the helper, which refuses the job if it
        may not run as that user (RunnerError with the helper's words)."""
        helper = self.params.run_as_command
        if not helper:
            raise RunnerError(f"job {launch.job_id} runs as {launch.run_as}, but destination {self.destination!r} "
                              "has no run_as_command")
        if not handed_over(launch.job_dir):  # an earlier launch of the job handed it over already
            call_helper(helper, "handover", launch.job_id)

    # ---- helpers for workers and tests ---------------------------------------------------
    def wait_registered(self, timeout: float | None = None) -> bool:
        return self._registered.wait(timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the driver's thread has ended: `close()`, fencing, or pymesos giving
        up on the master (`connect_timeout_s`); True if it has."""
        thread = self._driver_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def fenced(self) -> str | None:
        """Why this runner stopped for good (another scheduler took its framework over)."""
        return self._fenced

    def pending_ids(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    # ---- scheduler callbacks (driver thread) -----------------------------------------
    def _on_subscribed(self, framework_id: str | None) -> None:
        if framework_id:
            if self.framework_id and framework_id != self.framework_id:
                log.warning("Mesos gave a new framework id %s (was %s)", framework_id, self.framework_id)
            self.framework_id = framework_id
            self._write_framework_id(framework_id)
        with self._lock:
            self._suppressed = False  # a (re)subscription starts unsuppressed
            known = list(self._active)
        self._registered.set()
        if known:  # after a master failover or our restart: what became of our tasks?
            self._reconcile(known)
        self._sync_offers()

    def _on_offers(self, offers: list[dict[str, Any]]) -> None:
        plan: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        with self._lock:
            for offer in offers:
                resources = [dict(r, scalar=dict(r.get("scalar", {}))) for r in offer.get("resources", [])]
                tasks = []
                for tid, job in list(self._pending.items()):
                    assert job.launch is not None
                    cpus, mem = float(job.launch.cores), float(job.launch.memory_mb or self.default_memory_mb)
                    if _free(resources, "cpus") + 1e-9 < cpus or _free(resources, "mem") + 1e-9 < mem:
                        continue
                    tasks.append(self._task_info(job.launch, offer, _take(resources, "cpus", cpus)
                                                 + _take(resources, "mem", mem)))
                    del self._pending[tid]
                    self._active[tid] = job
                    job.state, job.agent_id = "TASK_STAGING", offer["agent_id"]["value"]
                plan.append((offer, tasks))
        filters = {"refuse_seconds": self.refuse_seconds}
        for offer, tasks in plan:
            if not tasks:
                self._call("declineOffer", offer["id"], filters)
            elif not self._call("launchTasks", offer["id"], tasks, filters):
                # the ACCEPT may or may not have reached the master: ask, don't guess
                ids = [t["task_id"]["value"] for t in tasks]
                with self._lock:
                    for tid in ids:
                        if tid in self._active:
                            self._active[tid].state = None
                self._reconcile(ids)
        self._sync_offers()

    def _on_update(self, status: dict[str, Any]) -> None:
        tid, state = status["task_id"]["value"], status["state"]
        with self._lock:
            job = self._active.get(tid)
            if job is None and tid not in self._done and tid not in self._pending:
                # a task we did not know (restart without recover): follow it by its name
                job_id = job_id_of(tid) or tid
                job = self._active[tid] = _Job(job_id, tid, None, None)
            if job is not None and state not in TERMINAL:
                job.state = state
                job.agent_id = (status.get("agent_id") or {}).get("value", job.agent_id)
                if state == "TASK_RUNNING" and job.started_at is None:
                    job.started_at = status.get("timestamp")
        if job is None or state not in TERMINAL:
            self._ack(status)  # non-terminal, a duplicate of a reported end, or superseded
            return
        if state == "TASK_ERROR" and "duplicate" in status.get("message", "").lower():
            with self._lock:  # the same task is already in Mesos: follow that one
                job.state = None
            self._ack(status)
            self._reconcile([tid])
            return
        completion = self._completion(job, status)
        if completion is None:
            with self._lock:
                self._active.pop(tid, None)
                job.state = job.agent_id = None
                self._pending[tid] = job
            log.warning("%s %s before it started: queued again", tid, state)
            self._ack(status)
            self._sync_offers()
            return
        if self._finish(job, completion):
            self._ack(status)

    def _on_agent_lost(self, agent_id: str) -> None:
        with self._lock:  # Mesos sends their updates first; make sure none was missed
            ids = [j.task_id for j in self._active.values() if j.agent_id == agent_id]
        if ids:
            self._reconcile(ids)

    def _on_error(self, message: str) -> None:
        log.error("Mesos framework error: %s", message)
        if "failed over" in message.lower():
            # another process subscribed with our framework id (same framework_id_file):
            # it owns the framework now; reconnecting would take it back, again and again
            self._fenced = f"framework {self.framework_id} was taken over by another scheduler"
            self._driver.stop(failover=True)
        elif "removed" in message.lower():
            # failover_timeout expired (or an operator removed us): that id is dead and its
            # tasks were killed. Subscribe afresh; reconciliation then settles each task.
            self.framework_id = None
            if self.framework_id_file is not None:
                self.framework_id_file.unlink(missing_ok=True)
            self._driver._framework.pop("id", None)  # pymesos has no public way to forget it

    # ---- internals ----------------------------------------------------------------------
    def _check_fenced(self) -> None:
        if self._fenced:
            raise MesosUnavailable(self._fenced)

    def _completion(self, job: _Job, status: dict[str, Any]) -> Completion | None:
        """The job's end, or None when it should run again (it was lost before starting)."""
        state, message = status["state"], status.get("message", "")
        reason = status.get("reason")
        code = JobDir(job.job_dir).recorded_exit_code() if job.job_dir is not None else None
        lost_unstarted = code is None and not job.claimed and job.launch is not None and not job.cancelled
        if lost_unstarted and (state == "TASK_DROPPED" or reason == "REASON_INVALID_OFFERS"):
            return None  # launched on a rescinded/invalid offer: it never existed
        if lost_unstarted and state in LOST and self.on_agent_lost == "requeue":
            return None
        if code is None and state == "TASK_FINISHED":
            code = 0
        if code is None and state == "TASK_FAILED":
            match = _EXIT_STATUS.search(message)
            code = int(match.group(1)) if match else None
        ended = status.get("timestamp")
        wall = ended - job.started_at if ended and job.started_at else None
        text = f"mesos {state}" + (f" ({reason})" if reason else "") + (f": {message}" if message else "")
        return Completion(job.job_id, exit_code=code, reason=text, wall_time_s=wall,
                          external_id=job.task_id, source="mesos", runner_state=RUNNER_STATES.get(reason or ""),
                          **({"ended_at": ended} if ended else {}))

    def _finish(self, job: _Job, completion: Completion) -> bool:
        """Report, then forget the task; False (keep it, do not acknowledge) if report failed.
        A directory the job's user holds comes back first."""
        if job.job_dir is not None:
            try:
                give_back(self.params.run_as_command, job.job_id, job.job_dir)
            except RunnerError as exc:
                log.warning("%s", exc)
        try:
            self.report(completion)
        except Exception:
            log.exception("report failed for %s: Mesos will deliver its update again", job.task_id)
            return False
        with self._lock:
            self._active.pop(job.task_id, None)
            self._done[job.task_id] = completion
            while len(self._done) > DONE_MEMORY:
                self._done.popitem(last=False)
        return True

    def _task_info(self, launch: Launch, offer: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": f"galaxy-tasks job {launch.job_id}",
            "task_id": {"value": launch.external_name},
            "agent_id": offer["agent_id"],
            "resources": resources,
            "command": {"shell": True, "value": "/bin/sh " + shlex.quote(str(launch.script))},
        }
        if launch.run_as is not None:
            info["command"]["user"] = launch.run_as
            info["command"]["environment"] = {"variables": [{"name": "GT_UMASK", "value": "027"}]}
        if launch.walltime_s:
            info["max_completion_time"] = {"nanoseconds": int(launch.walltime_s * 1e9)}
        return info

    def _sync_offers(self) -> None:
        """Suppress offers while nothing is pending, revive when work arrives; decision and
        call under one lock so the last call sent always matches the queue."""
        with self._offer_lock:
            with self._lock:
                want = bool(self._pending)
                if want == (not self._suppressed):
                    return
            if self._call("reviveOffers" if want else "suppressOffers"):
                with self._lock:
                    self._suppressed = not want

    def _reconcile(self, task_ids: list[str]) -> None:
        for i in range(0, len(task_ids), 1000):
            self._call("reconcileTasks", [{"task_id": {"value": t}} for t in task_ids[i:i + 1000]])

    def _ack(self, status: dict[str, Any]) -> None:
        if "uuid" in status:  # master-generated updates (reconciliation, lost agent) have none
            self._call("acknowledgeStatusUpdate", status)

    def _call(self, method: str, *args: Any) -> bool:
        """A driver call that never raises: a failed one is repeated by reconciliation, the
        next subscription, or Mesos resending the update."""
        try:
            getattr(self._driver, method)(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - pymesos raises anything; see the docstring
            log.warning("Mesos %s failed: %s", method, exc)
            return False

    def _read_framework_id(self) -> str | None:
        if self.framework_id_file is None:
            return None
        try:
            return self.framework_id_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _write_framework_id(self, framework_id: str) -> None:
        if self.framework_id_file is None:
            return
        path = self.framework_id_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(framework_id + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def _free(resources: list[dict[str, Any]], name: str) -> float:
    return sum(r["scalar"].get("value", 0.0) for r in resources if r.get("name") == name)


def _take(resources: list[dict[str, Any]], name: str, amount: float) -> list[dict[str, Any]]:
    """Carve `amount` of a scalar out of an offer's resources, keeping each piece's role,
    reservations and allocation info (a real master rejects resources it did not offer)."""
    taken = []
    for r in resources:
        if amount <= 1e-9:
            break
        if r.get("name") != name or r["scalar"].get("value", 0.0) <= 0:
            continue
        part = min(amount, r["scalar"]["value"])
        r["scalar"]["value"] -= part
        amount -= part
        taken.append(dict(r, scalar={"value": part}))
    return taken


class _Scheduler:
    """pymesos callbacks. None may raise: pymesos turns an exception escaping a callback
    into the death of its thread and a KeyboardInterrupt in the main thread."""

    def __init__(self, runner: MesosRunner) -> None:
        self.runner = runner

    def _safe(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("Mesos %s handler failed", what)

    def registered(self, driver: Any, framework_id: dict[str, Any], master_info: Any) -> None:
        log.info("registered with Mesos master %s as framework %s", master_info, framework_id["value"])
        self._safe("registered", self.runner._on_subscribed, framework_id["value"])

    def reregistered(self, driver: Any, master_info: Any) -> None:
        log.info("re-registered with Mesos master %s", master_info)
        self._safe("reregistered", self.runner._on_subscribed, driver.framework_id)

    def disconnected(self, driver: Any) -> None:
        log.warning("disconnected from the Mesos master; pymesos reconnects")

    def resourceOffers(self, driver: Any, offers: list[dict[str, Any]]) -> None:
        self._safe("offers", self.runner._on_offers, offers)

    def offerRescinded(self, driver: Any, offer_id: dict[str, Any]) -> None:
        # offers are answered in the callback that brought them, never held; a launch that
        # raced the rescind comes back as TASK_LOST/DROPPED (REASON_INVALID_OFFERS)
        log.info("offer %s rescinded", offer_id.get("value"))

    def statusUpdate(self, driver: Any, status: dict[str, Any]) -> None:
        self._safe("status update", self.runner._on_update, status)

    def slaveLost(self, driver: Any, agent_id: dict[str, Any]) -> None:
        log.warning("Mesos agent %s lost", agent_id.get("value"))
        self._safe("agent lost", self.runner._on_agent_lost, agent_id.get("value"))

    def executorLost(self, driver: Any, executor_id: Any, agent_id: Any, status: Any) -> None:
        log.warning("Mesos executor %s on %s lost (%s)", executor_id, agent_id, status)

    def error(self, driver: Any, message: str) -> None:
        self._safe("error", self.runner._on_error, message)

    def frameworkMessage(self, driver: Any, executor_id: Any, agent_id: Any, message: Any) -> None:
        pass

    def processHeartBeat(self, driver: Any) -> None:
        pass

    def inverseOffers(self, driver: Any, offers: Any) -> None:
        pass

    def inverseOfferRescinded(self, driver: Any, offer_id: Any) -> None:
        pass

    def operationStatusUpdate(self, driver: Any, status: Any) -> None:
        pass
