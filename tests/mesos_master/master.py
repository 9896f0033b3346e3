"""TEST DOUBLE of an Apache Mesos master -- NOT Mesos. Used only to test the Mesos runner.

Apache Mesos is retired and no master is installable, so the runner is tested against this
double. It speaks the real v1 scheduler HTTP API the way pymesos's MesosSchedulerDriver uses
it: `POST /api/v1/scheduler` with JSON; SUBSCRIBE is answered by a chunked RecordIO event
stream carrying a `Mesos-Stream-Id` header; every other call must repeat that header and is
answered `202 Accepted`; a standby master answers `307` pointing at the leader; `GET /version`
tells pymesos the API level. N simulated agents run command tasks as local processes
(`/bin/sh -c <CommandInfo.value>`), each as its user (`CommandInfo.user`, else
`FrameworkInfo.user`: an agent running as root switches to it, as Mesos's `--switch_user`
does, and owns the sandbox to it), and send status updates with a uuid that must be
acknowledged; unacknowledged ones are resent, one update in flight per task, like the
agent's status update manager.

What it simplifies: one offer per agent holding all of its free cpus/mem; a filter (from
DECLINE, or ACCEPT for what it left unused) is per (framework, agent) and, as in Mesos,
holds back only offers no larger than the resources it refused; frameworks are never partition-aware unless they say so;
state survives `restart()` (as if the agents re-registered with a recovered master).

Faults are injected with Python methods (`fail_task`, `lose_task`, `lose_agent`,
`pause_agent`, `rescind_offers`, `rescind_next_accept`, `drop_streams`, `restart`), or with
`POST /control/<method>` (JSON keyword arguments) when `control=True`. Agents can also
join through `add_agent` (the stand-in mesos-agent in tests/mesos/standins does), and
`GET /master/state` lists them under "slaves", as a real master does.
"""
from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Callable

log = logging.getLogger("mesos_master")

VERSION = "1.11.0"
TERMINAL = {
    "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST",
    "TASK_DROPPED", "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN",
}
CONTROL = {
    "add_agent", "fail_task", "lose_task", "lose_agent", "restore_agent", "pause_agent",
    "rescind_offers", "rescind_next_accept", "drop_streams", "restart",
}


@dataclass
class Agent:
    id: str
    hostname: str
    cpus: float
    mem: float
    used_cpus: float = 0.0
    used_mem: float = 0.0
    alive: bool = True
    paused: bool = False  # launched tasks stay TASK_STAGING (not started) while paused

    def free(self) -> tuple[float, float]:
        return round(self.cpus - self.used_cpus, 3), round(self.mem - self.used_mem, 3)


@dataclass
class Stream:
    id: str
    queue: Queue[dict[str, Any] | None] = field(default_factory=Queue)


@dataclass
class Framework:
    id: str
    info: dict[str, Any]
    stream: Stream | None = None
    suppressed: bool = False
    # agent id -> (refused until, cpus, mem): offers within those resources are held back
    filters: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    disconnected_at: float | None = None

    @property
    def partition_aware(self) -> bool:
        return any(c.get("type") == "PARTITION_AWARE" for c in self.info.get("capabilities", []))


@dataclass
class Task:
    id: str
    framework_id: str
    agent_id: str
    info: dict[str, Any]
    cpus: float
    mem: float
    state: str = "TASK_STAGING"
    status: dict[str, Any] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)  # unacknowledged, head in flight
    next_send: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    kill_requested: bool = False
    limit_reason: str | None = None  # the limit the agent ended it for (REASON_...)


@dataclass
class Offer:
    id: str
    framework_id: str
    agent_id: str
    cpus: float
    mem: float


def _scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}, "role": "*"}


def _uuid() -> str:
    return base64.b64encode(uuid.uuid4().bytes).decode("ascii")


class FakeMesosMaster:
    """In-process Mesos master test double; `start()` it, point pymesos at `.address`."""

    def __init__(
        self,
        agents: int = 2,
        cpus: float = 2.0,
        mem: float = 1024.0,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_s: float = 15.0,
        allocation_interval_s: float = 0.1,
        update_retry_s: float = 10.0,
        default_refuse_s: float = 5.0,
        leader: str | None = None,
        workdir: Path | None = None,
        control: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.heartbeat_s = heartbeat_s
        self.allocation_interval_s = allocation_interval_s
        self.update_retry_s = update_retry_s
        self.default_refuse_s = default_refuse_s
        self.leader = leader  # set: this master is a standby that redirects to the leader
        self.control = control
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fake-mesos-"))
        self.master_id = str(uuid.uuid4())
        self.agents = {
            a.id: a
            for a in (
                Agent(f"{self.master_id}-S{i}", f"agent{i}", cpus, mem) for i in range(agents)
            )
        }
        self.frameworks: dict[str, Framework] = {}
        self.removed: set[str] = set()
        self.tasks: dict[tuple[str, str], Task] = {}  # active (incl. terminal, unacknowledged)
        self.completed: dict[tuple[str, str], Task] = {}
        self.offers: dict[str, Offer] = {}
        self.calls: list[dict[str, Any]] = []  # every scheduler call received, with "_t"
        self.events: list[tuple[float, str, dict[str, Any]]] = []  # (time, framework id, event)
        self.subscriptions: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._fail_next_accept = False
        self._counter = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()
        self._running = False
        self._ticker: threading.Thread | None = None

    # ---- life cycle -------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FakeMesosMaster:
        self._serve()
        self._running = True
        self._ticker = threading.Thread(target=self._tick_loop, name="fake-mesos-ticker", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._running = False
        self._unserve()
        with self._lock:
            for task in list(self.tasks.values()):
                self._kill_process(task, signal.SIGKILL)
        if self._ticker:
            self._ticker.join(timeout=5)

    def __enter__(self) -> FakeMesosMaster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self, downtime_s: float = 0.5) -> None:
        """Master failover: streams and connections drop, offers vanish, the port is closed
        for `downtime_s`; agents keep their tasks and frameworks must re-subscribe."""
        self._unserve()
        with self._lock:
            self.master_id = str(uuid.uuid4())
            self.offers.clear()
            for fw in self.frameworks.values():
                fw.stream = None
            for agent in self.agents.values():
                agent.used_cpus = sum(t.cpus for t in self.tasks.values()
                                      if t.agent_id == agent.id and t.state not in TERMINAL)
                agent.used_mem = sum(t.mem for t in self.tasks.values()
                                     if t.agent_id == agent.id and t.state not in TERMINAL)
        time.sleep(downtime_s)
        with self._lock:
            now = time.time()
            for fw in self.frameworks.values():
                fw.disconnected_at = now  # the failover timeout runs from the recovery
        self._serve()

    def _serve(self) -> None:
        master = self

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        class Handler(_Handler):
            pass

        Handler.master = master
        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="fake-mesos-http", daemon=True).start()

    def _unserve(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            for fw in self.frameworks.values():
                if fw.stream is not None:
                    fw.stream.queue.put(None)
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- agents joining (the stand-in mesos-agent of tests/mesos/standins) ------------------
    def add_agent(self, hostname: str, cpus: float = 2.0, mem: float = 1024.0) -> str:
        """A simulated agent registers (its tasks still run as local processes of this
        double); returns its id. Removed again with `lose_agent`."""
        with self._lock:
            agent = Agent(f"{self.master_id}-S{len(self.agents)}", hostname, float(cpus), float(mem))
            self.agents[agent.id] = agent
            return agent.id

    # ---- fault injection ----------------------------------------------------------------
    def fail_task(self, task_id: str, message: str = "injected TASK_FAILED") -> None:
        with self._lock:
            task = self._task(task_id)
            self._kill_process(task, signal.SIGKILL)
            self._agent_update(task, "TASK_FAILED", message, "REASON_COMMAND_EXECUTOR_FAILED")

    def exceed_memory(self, task_id: str) -> None:
        """The task's container goes over its memory: the agent kills it and says why, as
        Mesos's memory isolator does (TASK_FAILED, REASON_CONTAINER_LIMITATION_MEMORY)."""
        with self._lock:
            task = self._task(task_id)
            task.limit_reason = "REASON_CONTAINER_LIMITATION_MEMORY"
            self._kill_process(task, signal.SIGKILL)

    def lose_task(self, task_id: str, message: str = "injected TASK_LOST", kill: bool = True) -> None:
        with self._lock:
            task = self._task(task_id)
            if kill:
                self._kill_process(task, signal.SIGKILL)
            self._agent_update(task, "TASK_LOST", message, "REASON_EXECUTOR_TERMINATED")

    def lose_agent(self, agent_id: str, state: str = "TASK_LOST", kill: bool = True) -> None:
        """The agent is removed: its offers are rescinded, its tasks reported `state` by the
        master (no uuid: nothing to acknowledge), then a FAILURE event for the agent."""
        with self._lock:
            agent = self.agents[agent_id]
            agent.alive = False
            self._rescind(lambda o: o.agent_id == agent_id)
            for key, task in list(self.tasks.items()):
                if task.agent_id != agent_id:
                    continue
                if kill:
                    self._kill_process(task, signal.SIGKILL)
                task.updates.clear()
                fw = self.frameworks.get(task.framework_id)
                lost = "TASK_UNREACHABLE" if state == "TASK_LOST" and fw and fw.partition_aware else state
                self._master_update(task.framework_id, task, lost, "Agent removed", "REASON_AGENT_REMOVED")
                if lost in TERMINAL:
                    self.completed[key] = self.tasks.pop(key)
            agent.used_cpus = agent.used_mem = 0.0
            for fw in self.frameworks.values():
                self._send(fw, {"type": "FAILURE", "failure": {"agent_id": {"value": agent_id}}})

    def restore_agent(self, agent_id: str) -> None:
        with self._lock:
            self.agents[agent_id].alive = True

    def pause_agent(self, agent_id: str, paused: bool = True) -> None:
        """While paused, tasks launched on the agent are not started (stay TASK_STAGING)."""
        with self._lock:
            agent = self.agents[agent_id]
            agent.paused = paused
            if not paused:
                for task in self.tasks.values():
                    if task.agent_id == agent_id and task.state == "TASK_STAGING" and task.proc is None:
                        self._start_task(task)

    def rescind_offers(self, agent_id: str | None = None) -> int:
        with self._lock:
            return self._rescind(lambda o: agent_id is None or o.agent_id == agent_id)

    def rescind_next_accept(self) -> None:
        """The next ACCEPT races a rescind: its offers are rescinded just before it is
        processed, so its tasks come back TASK_LOST (REASON_INVALID_OFFERS)."""
        with self._lock:
            self._fail_next_accept = True

    def drop_streams(self) -> None:
        """Close every subscription stream (the server stays up): frameworks re-subscribe."""
        with self._lock:
            for fw in self.frameworks.values():
                if fw.stream is not None:
                    fw.stream.queue.put(None)

    # ---- observation ----------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what or predicate}")

    def calls_of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c for c in self.calls if c.get("type") == kind]

    def events_of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [(t, e) for t, _, e in self.events if e.get("type") == kind]

    def task(self, task_id: str) -> Task | None:
        with self._lock:
            for (_, tid), task in list(self.tasks.items()) + list(self.completed.items()):
                if tid == task_id:
                    return task
        return None

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self.master_id,
                "frameworks": [
                    {"id": f.id, "name": f.info.get("name"), "connected": f.stream is not None,
                     "suppressed": f.suppressed} for f in self.frameworks.values()
                ],
                "removed_frameworks": sorted(self.removed),
                "agents": [
                    {"id": a.id, "alive": a.alive, "paused": a.paused, "free": a.free()}
                    for a in self.agents.values()
                ],
                # as a real master's /master/state names them
                "slaves": [
                    {"id": a.id, "hostname": a.hostname, "active": a.alive,
                     "resources": {"cpus": a.cpus, "mem": a.mem}}
                    for a in self.agents.values()
                ],
                "tasks": [{"id": t.id, "state": t.state, "agent_id": t.agent_id}
                          for t in self.tasks.values()],
                "completed_tasks": [{"id": t.id, "state": t.state} for t in self.completed.values()],
            }

    # ---- protocol: subscribe ------------------------------------------------------------
    def subscribe(self, body: dict[str, Any]) -> tuple[Stream, Framework | None]:
        info = dict(body.get("subscribe", {}).get("framework_info", {}))
        fid = (body.get("framework_id") or info.get("id") or {}).get("value")
        stream = Stream(str(uuid.uuid4()))
        with self._lock:
            self.subscriptions.append({"framework_id": fid, "info": info, "_t": time.time()})
            if fid in self.removed:
                stream.queue.put({"type": "ERROR", "error": {"message": "Framework has been removed"}})
                stream.queue.put(None)
                return stream, None
            if fid is None:
                self._counter += 1
                fid = f"{self.master_id}-{self._counter:04d}"
            fw = self.frameworks.get(fid)
            if fw is None:  # new, or re-subscribing to a master that lost it: adopt the id
                fw = self.frameworks[fid] = Framework(fid, info)
            elif fw.stream is not None:
                self._send(fw, {"type": "ERROR", "error": {"message": "Framework failed over"}})
                fw.stream.queue.put(None)
            fw.info, fw.stream, fw.disconnected_at = info, stream, None
            fw.suppressed = bool(body.get("subscribe", {}).get("suppressed_roles"))
            fw.filters.clear()
            self._send(fw, {"type": "SUBSCRIBED", "subscribed": {
                "framework_id": {"value": fid},
                "heartbeat_interval_seconds": self.heartbeat_s,
                "master_info": {"id": self.master_id, "hostname": self.host, "port": self.port,
                                "ip": 0, "version": VERSION},
            }})
            for task in self.tasks.values():  # resend what is still unacknowledged
                if task.framework_id == fid:
                    task.next_send = 0.0
                    self._pump(task)
            return stream, fw

    def stream_closed(self, fw: Framework, stream: Stream) -> None:
        with self._lock:
            if fw.stream is stream:
                fw.stream = None
                fw.disconnected_at = time.time()
                self._rescind(lambda o: o.framework_id == fw.id, notify=False)

    # ---- protocol: calls ------------------------------------------------------------------
    def call(self, body: dict[str, Any], stream_id: str | None) -> tuple[int, str]:
        kind = body.get("type", "")
        fid = (body.get("framework_id") or {}).get("value")
        with self._lock:
            self.calls.append({**body, "_t": time.time()})
            if fid in self.removed:
                return 403, "Framework has been removed"
            fw = self.frameworks.get(fid or "")
            if fw is None:
                return 400, f"Framework '{fid}' not found"
            if fw.stream is None or stream_id != fw.stream.id:
                return 400, "The stream ID included in this request didn't match the stream ID currently associated with framework ID"
            handler = getattr(self, "_call_" + kind.lower(), None)
            if handler is None:
                return 400, f"Unsupported call {kind}"
            handler(fw, body.get(kind.lower(), {}))
            return 202, ""

    def _call_accept(self, fw: Framework, accept: dict[str, Any]) -> None:
        ids = [o["value"] for o in accept.get("offer_ids", [])]
        if self._fail_next_accept:
            self._fail_next_accept = False
            self._rescind(lambda o: o.id in ids)
        offers = [self.offers.get(i) for i in ids]
        valid = bool(offers) and all(o is not None and o.framework_id == fw.id for o in offers)
        agent_id = offers[0].agent_id if valid and offers[0] else None
        valid = valid and all(o.agent_id == agent_id for o in offers if o)
        cpus = sum(o.cpus for o in offers if o) if valid else 0.0
        mem = sum(o.mem for o in offers if o) if valid else 0.0
        for o in offers:
            if o is not None and o.framework_id == fw.id:
                self.offers.pop(o.id, None)
        for op in accept.get("operations", []):
            if op.get("type") != "LAUNCH":
                continue
            for info in op.get("launch", {}).get("task_infos", []):
                self._launch(fw, info, agent_id if valid else None, cpus, mem)
                cpus -= _resource(info, "cpus")
                mem -= _resource(info, "mem")
        if valid and agent_id:
            self._refuse(fw, agent_id, accept.get("filters"), max(cpus, 0.0), max(mem, 0.0))

    def _launch(self, fw: Framework, info: dict[str, Any], agent_id: str | None,
                cpus: float, mem: float) -> None:
        tid = info["task_id"]["value"]
        task = Task(tid, fw.id, agent_id or info.get("agent_id", {}).get("value", ""), info,
                    _resource(info, "cpus"), _resource(info, "mem"))
        if agent_id is None:
            state = "TASK_DROPPED" if fw.partition_aware else "TASK_LOST"
            self._master_update(fw.id, task, state, "Task launched with invalid offers",
                                "REASON_INVALID_OFFERS")
            return
        if (fw.id, tid) in self.tasks:
            self._master_update(fw.id, task, "TASK_ERROR", "Task has duplicate ID",
                                "REASON_TASK_INVALID")
            return
        if task.cpus > cpus + 1e-9 or task.mem > mem + 1e-9:
            self._master_update(fw.id, task, "TASK_ERROR", "Task uses more resources than offered",
                                "REASON_TASK_INVALID")
            return
        agent = self.agents[agent_id]
        agent.used_cpus += task.cpus
        agent.used_mem += task.mem
        self.completed.pop((fw.id, tid), None)
        self.tasks[(fw.id, tid)] = task
        task.status = self._status(task, "TASK_STAGING", "", None, "SOURCE_MASTER")
        if not agent.paused:
            self._start_task(task)

    def _call_decline(self, fw: Framework, decline: dict[str, Any]) -> None:
        for oid in decline.get("offer_ids", []):
            offer = self.offers.pop(oid["value"], None)
            if offer is not None and offer.framework_id == fw.id:
                self._refuse(fw, offer.agent_id, decline.get("filters"), offer.cpus, offer.mem)

    def _refuse(self, fw: Framework, agent_id: str, filters: dict[str, Any] | None,
                cpus: float, mem: float) -> None:
        seconds = (filters or {}).get("refuse_seconds", self.default_refuse_s)
        fw.filters[agent_id] = (time.time() + float(seconds), cpus, mem)

    @staticmethod
    def _filtered(fw: Framework, agent_id: str, cpus: float, mem: float, now: float) -> bool:
        until, f_cpus, f_mem = fw.filters.get(agent_id, (0.0, 0.0, 0.0))
        return until > now and cpus <= f_cpus + 1e-9 and mem <= f_mem + 1e-9

    def _call_suppress(self, fw: Framework, _: dict[str, Any]) -> None:
        fw.suppressed = True

    def _call_revive(self, fw: Framework, _: dict[str, Any]) -> None:
        fw.suppressed = False
        fw.filters.clear()

    def _call_kill(self, fw: Framework, kill: dict[str, Any]) -> None:
        tid = kill["task_id"]["value"]
        task = self.tasks.get((fw.id, tid))
        if task is None:
            state = "TASK_UNKNOWN" if fw.partition_aware else "TASK_LOST"
            ghost = Task(tid, fw.id, (kill.get("agent_id") or {}).get("value", ""), {}, 0, 0)
            self._master_update(fw.id, ghost, state, "Attempted to kill an unknown task",
                                "REASON_RECONCILIATION")
        elif task.state in TERMINAL:
            return
        elif task.proc is None:
            self._agent_update(task, "TASK_KILLED", "Killed before delivery to the executor",
                               "REASON_TASK_KILLED_DURING_LAUNCH")
        else:
            task.kill_requested = True
            self._kill_process(task, signal.SIGTERM)

    def _call_acknowledge(self, fw: Framework, ack: dict[str, Any]) -> None:
        key = (fw.id, ack["task_id"]["value"])
        task = self.tasks.get(key)
        if task is None or not task.updates or task.updates[0].get("uuid") != ack.get("uuid"):
            return  # stale or duplicate acknowledgement: ignored, as Mesos does
        task.updates.pop(0)
        task.next_send = 0.0
        if not task.updates and task.state in TERMINAL:
            self.completed[key] = self.tasks.pop(key)
        else:
            self._pump(task)

    def _call_reconcile(self, fw: Framework, reconcile: dict[str, Any]) -> None:
        wanted = [t["task_id"]["value"] for t in reconcile.get("tasks", [])]
        if not wanted:  # implicit: the latest state of every task the master knows
            wanted = [tid for (f, tid) in self.tasks if f == fw.id]
        for tid in wanted:
            task = self.tasks.get((fw.id, tid))
            if task is not None:
                self._master_update(fw.id, task, task.state, task.status.get("message", ""),
                                    "REASON_RECONCILIATION", keep=True)
            else:
                ghost = Task(tid, fw.id, "", {}, 0, 0)
                state = "TASK_UNKNOWN" if fw.partition_aware else "TASK_LOST"
                self._master_update(fw.id, ghost, state, "Reconciliation: Task is unknown",
                                    "REASON_RECONCILIATION")

    def _call_teardown(self, fw: Framework, _: dict[str, Any]) -> None:
        self._remove_framework(fw)

    # ---- internals ----------------------------------------------------------------------
    def _task(self, task_id: str) -> Task:
        for (_, tid), task in self.tasks.items():
            if tid == task_id:
                return task
        raise KeyError(task_id)

    def _send(self, fw: Framework, event: dict[str, Any]) -> bool:
        if fw.stream is None:
            return False
        self.events.append((time.time(), fw.id, event))
        fw.stream.queue.put(event)
        return True

    def _status(self, task: Task, state: str, message: str, reason: str | None,
                source: str) -> dict[str, Any]:
        status: dict[str, Any] = {
            "task_id": {"value": task.id},
            "state": state,
            "source": source,
            "message": message,
            "timestamp": time.time(),
        }
        if task.agent_id:
            status["agent_id"] = {"value": task.agent_id}
        if source == "SOURCE_EXECUTOR":
            status["executor_id"] = {"value": task.id}
        if reason:
            status["reason"] = reason
        return status

    def _agent_update(self, task: Task, state: str, message: str = "",
                      reason: str | None = None) -> None:
        """An update from the agent: reliable (uuid, acknowledged, resent until then)."""
        if task.state in TERMINAL:
            return
        status = self._status(task, state, message, reason,
                              "SOURCE_EXECUTOR" if reason is None else "SOURCE_AGENT")
        status["uuid"] = _uuid()
        task.state, task.status = state, status
        task.updates.append(status)
        if state in TERMINAL:
            agent = self.agents[task.agent_id]
            agent.used_cpus -= task.cpus
            agent.used_mem -= task.mem
        self._pump(task)

    def _master_update(self, fid: str, task: Task, state: str, message: str, reason: str,
                       keep: bool = False) -> None:
        """An update generated by the master: no uuid, nothing to acknowledge, not resent."""
        status = self._status(task, state, message, reason, "SOURCE_MASTER")
        if not keep:
            task.state, task.status = state, status
        fw = self.frameworks.get(fid)
        if fw is not None:
            self._send(fw, {"type": "UPDATE", "update": {"status": status}})

    def _pump(self, task: Task) -> None:
        fw = self.frameworks.get(task.framework_id)
        if not task.updates or fw is None or fw.stream is None or time.time() < task.next_send:
            return
        if self._send(fw, {"type": "UPDATE", "update": {"status": task.updates[0]}}):
            task.next_send = time.time() + self.update_retry_s

    def _rescind(self, which: Callable[[Offer], bool], notify: bool = True) -> int:
        gone = [o for o in self.offers.values() if which(o)]
        for offer in gone:
            del self.offers[offer.id]
            fw = self.frameworks.get(offer.framework_id)
            if notify and fw is not None:
                self._send(fw, {"type": "RESCIND", "rescind": {"offer_id": {"value": offer.id}}})
        return len(gone)

    def _remove_framework(self, fw: Framework) -> None:
        self.removed.add(fw.id)
        self.frameworks.pop(fw.id, None)
        self._rescind(lambda o: o.framework_id == fw.id, notify=False)
        for key, task in list(self.tasks.items()):
            if task.framework_id == fw.id:
                self._kill_process(task, signal.SIGKILL)
                if task.state not in TERMINAL:
                    agent = self.agents[task.agent_id]
                    agent.used_cpus -= task.cpus
                    agent.used_mem -= task.mem
                task.state = "TASK_KILLED"
                self.completed[key] = self.tasks.pop(key)
        if fw.stream is not None:
            fw.stream.queue.put(None)
            fw.stream = None

    def _start_task(self, task: Task) -> None:
        sandbox = self.workdir / task.agent_id / f"{task.id}-{uuid.uuid4().hex[:8]}"
        sandbox.mkdir(parents=True)
        command = task.info.get("command", {})
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MESOS_SANDBOX": str(sandbox),
               "MESOS_TASK_ID": task.id, "MESOS_AGENT_ID": task.agent_id}
        env.update({v["name"]: v.get("value", "")
                    for v in command.get("environment", {}).get("variables", [])})
        if command.get("shell", True):
            argv = ["/bin/sh", "-c", command.get("value", "")]
        else:
            argv = [command.get("value", "")] + list(command.get("arguments", [])[1:])
        fw = self.frameworks.get(task.framework_id)
        name = command.get("user") or (fw.info.get("user") if fw else None)
        try:
            user = pwd.getpwnam(name) if name else pwd.getpwuid(os.geteuid())
        except KeyError:
            self._agent_update(task, "TASK_FAILED", f"Failed to launch: no user '{name}' on this agent",
                               "REASON_EXECUTOR_TERMINATED")
            return
        switch: dict[str, Any] = {}
        if user.pw_uid != os.geteuid():  # Mesos's switch_user: the task is the user's, and so is its sandbox
            os.chown(sandbox, user.pw_uid, user.pw_gid)
            switch = {"user": user.pw_uid, "group": user.pw_gid,
                      "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid)}
            env.update(USER=user.pw_name, HOME=user.pw_dir)
        try:
            with open(sandbox / "stdout", "wb") as out, open(sandbox / "stderr", "wb") as err:
                task.proc = subprocess.Popen(argv, cwd=sandbox, env=env, stdout=out, stderr=err,
                                             stdin=subprocess.DEVNULL, start_new_session=True, **switch)
        except OSError as exc:
            self._agent_update(task, "TASK_FAILED", f"Failed to launch: {exc}",
                               "REASON_EXECUTOR_TERMINATED")
            return
        self._agent_update(task, "TASK_STARTING")
        self._agent_update(task, "TASK_RUNNING")
        limit_ns = (task.info.get("max_completion_time") or {}).get("nanoseconds")
        if limit_ns:  # the executor kills a task at its max_completion_time (Mesos >= 1.4)
            timer = threading.Timer(int(limit_ns) / 1e9, self._complete_time_reached, (task,))
            timer.daemon = True
            timer.start()
        threading.Thread(target=self._watch, args=(task, task.proc), daemon=True,
                         name=f"fake-mesos-task-{task.id}").start()

    def _complete_time_reached(self, task: Task) -> None:
        with self._lock:
            if task.state not in TERMINAL and not task.kill_requested:
                task.limit_reason = "REASON_MAX_COMPLETION_TIME_REACHED"
                self._kill_process(task, signal.SIGKILL)

    def _watch(self, task: Task, proc: subprocess.Popen[bytes]) -> None:
        rc = proc.wait()
        with self._lock:
            if task.limit_reason == "REASON_MAX_COMPLETION_TIME_REACHED":
                self._agent_update(task, "TASK_FAILED", "Task was killed since it reached its max completion time",
                                   task.limit_reason)
            elif task.limit_reason == "REASON_CONTAINER_LIMITATION_MEMORY":
                self._agent_update(task, "TASK_FAILED", "Memory limit exceeded: Requested: 64MB Maximum Used: 65MB",
                                   task.limit_reason)
            elif task.kill_requested:
                self._agent_update(task, "TASK_KILLED", "Command terminated with signal Terminated")
            elif rc == 0:
                self._agent_update(task, "TASK_FINISHED", "Command exited with status 0")
            elif rc < 0:
                name = signal.Signals(-rc).name
                self._agent_update(task, "TASK_FAILED", f"Command terminated with signal {name}")
            else:
                self._agent_update(task, "TASK_FAILED", f"Command exited with status {rc}")

    def _kill_process(self, task: Task, sig: int) -> None:
        if task.proc is not None and task.proc.poll() is None:
            try:
                os.killpg(task.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _tick_loop(self) -> None:
        while self._running:
            try:
                with self._lock:
                    self._tick()
            except Exception:  # a test double must not die silently mid-test
                log.exception("fake mesos master tick failed")
            time.sleep(self.allocation_interval_s)

    def _tick(self) -> None:
        now = time.time()
        for fw in list(self.frameworks.values()):
            timeout = float(fw.info.get("failover_timeout", 0.0))
            if fw.stream is None and fw.disconnected_at is not None and now - fw.disconnected_at > timeout:
                log.info("framework %s failover timeout (%ss) expired: removed", fw.id, timeout)
                self._remove_framework(fw)
        for task in list(self.tasks.values()):
            self._pump(task)
        if self._server is None:
            return
        offered = {o.agent_id for o in self.offers.values()}
        for fw in sorted(self.frameworks.values(), key=lambda f: f.id):
            if fw.stream is None or fw.suppressed:
                continue
            batch = []
            for agent in self.agents.values():
                cpus, mem = agent.free()
                if (not agent.alive or agent.id in offered or cpus < 0.01 or mem < 1
                        or self._filtered(fw, agent.id, cpus, mem, now)):
                    continue
                offer = Offer(str(uuid.uuid4()), fw.id, agent.id, cpus, mem)
                self.offers[offer.id] = offer
                offered.add(agent.id)
                batch.append({
                    "id": {"value": offer.id}, "framework_id": {"value": fw.id},
                    "agent_id": {"value": agent.id}, "hostname": agent.hostname,
                    "resources": [_scalar("cpus", cpus), _scalar("mem", mem)],
                })
            if batch:
                self._send(fw, {"type": "OFFERS", "offers": {"offers": batch}})


def _resource(info: dict[str, Any], name: str) -> float:
    return sum(r.get("scalar", {}).get("value", 0.0)
               for r in info.get("resources", []) if r.get("name") == name)


def _record(event: dict[str, Any]) -> bytes:
    data = json.dumps(event).encode("utf-8")
    record = str(len(data)).encode("ascii") + b"\n" + data
    return f"{len(record):x}\r\n".encode("ascii") + record + b"\r\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (pymesos reuses one connection for its calls)."""

    protocol_version = "HTTP/1.1"
    master: FakeMesosMaster

    def setup(self) -> None:
        super().setup()
        with self.master._lock:
            self.master._conns.add(self.connection)

    def finish(self) -> None:
        with self.master._lock:
            self.master._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, code: int, body: Any = b"", headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else (
            json.dumps(body).encode() if not isinstance(body, str) else body.encode())
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if data and not isinstance(body, (bytes, str)):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/version", "/master/version"):
            self._reply(200, {"version": VERSION})
        elif path in ("/redirect", "/master/redirect"):
            self._reply(307, b"", {"Location": f"//{self.master.leader or self.master.address}"})
        elif path in ("/state", "/master/state", "/state.json"):
            self._reply(200, self.master.state())
        else:
            self._reply(404, b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0].rstrip("/")
        if path.startswith("/control/") and self.master.control:
            return self._control(path[len("/control/"):], raw)
        if path not in ("/api/v1/scheduler", "/master/api/v1/scheduler"):
            return self._reply(404, b"")
        if self.master.leader:
            return self._reply(307, b"", {"Location": f"//{self.master.leader}/api/v1/scheduler"})
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._reply(415, "Expecting 'Content-Type' of application/json")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            return self._reply(400, f"Failed to parse body into JSON: {exc}")
        if body.get("type") == "SUBSCRIBE":
            return self._subscribe(body)
        code, message = self.master.call(body, self.headers.get("Mesos-Stream-Id"))
        self._reply(code, message)

    def _subscribe(self, body: dict[str, Any]) -> None:
        stream, fw = self.master.subscribe(body)
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Mesos-Stream-Id", stream.id)
        self.end_headers()
        try:
            while True:
                try:
                    event = stream.queue.get(timeout=self.master.heartbeat_s)
                except Empty:
                    event = {"type": "HEARTBEAT"}
                if event is None:
                    self.wfile.write(b"0\r\n\r\n")
                    break
                self.wfile.write(_record(event))
                self.wfile.flush()
        except OSError:
            pass
        finally:
            if fw is not None:
                self.master.stream_closed(fw, stream)

    def _control(self, name: str, raw: bytes) -> None:
        if name not in CONTROL:
            return self._reply(404, f"unknown control {name}")
        kwargs = json.loads(raw or b"{}")
        target = getattr(self.master, name)
        if name == "restart":  # it closes this very connection: run it in the background
            threading.Thread(target=target, kwargs=kwargs, daemon=True).start()
            return self._reply(202, {"ok": True})
        try:
            return self._reply(200, {"result": target(**kwargs)})
        except KeyError as exc:
            return self._reply(404, {"error": f"unknown {exc}"})
