"""The process's listener for job announcements, and its confirmation thread.

One selector thread accepts the announcements that batch scripts send (`script.py`), drops
malformed lines and those whose token is wrong (an HMAC of the job id under a secret of the
process) without asking Slurm anything, and queues the rest; one confirmation thread asks
Slurm about everything announced at about the same time in one squeue (the jobcomp record
for a job squeue has forgotten) and only then reports the end. An announcement is a hint,
never believed: a forged, premature or repeated one changes nothing, and one that is lost
(worker down, network) is left to `status()`, i.e. reconciliation.

Like the DRMAA session, the listener belongs to the process: every SlurmRunner of a process
shares it, and it does not survive fork(). Its port and secret are kept in a state file
(`state.py`), so a process restarted under the same name binds the same port again and
still hears, and can verify, the jobs submitted before.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import re
import secrets
import selectors
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.runners.base import Completion, Tracked
from galaxy_tasks.runners.batch import PerProcess
from galaxy_tasks.runners.slurm.ends import StoodDown
from galaxy_tasks.runners.slurm.params import SlurmParams
from galaxy_tasks.runners.slurm.records import SLURM_ID
from galaxy_tasks.runners.slurm.script import ANNOUNCE_PREFIX
from galaxy_tasks.runners.slurm.state import ListenerState

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_MAX_LINE = 256
_MAX_CONNECTIONS = 256
_CONNECTION_TIMEOUT_S = 5.0
_MAX_EARLY = 10_000
_EARLY_TTL_S = 3600.0
_KEPT_LATENCIES = 10_000

Verdict = Completion | StoodDown | None


class Follower(Protocol):
    """What the listener calls back: a SlurmRunner."""

    @property
    def confirm_timeout_s(self) -> float: ...

    def confirm(self, jobs: Sequence[Tracked]) -> dict[str, Verdict]: ...

    def emit(self, completion: Completion, job: Tracked) -> None: ...


def announcement_token(secret: bytes, job_id: str) -> str:
    """What a job must send with its announcement: proves the line came from a script this
    process (or an earlier one with the same state file) wrote."""
    return hmac.new(secret, f"{ANNOUNCE_PREFIX} {job_id}".encode(), hashlib.sha256).hexdigest()[:32]


@dataclass
class Pending:
    """A followed job whose end was announced (or hinted): to be confirmed with Slurm."""

    job: Tracked
    runner: Follower
    heard_at: float
    due: float
    attempts: int = 0
    once: bool = False  # one look only (an adopted job): if still running, it announces itself


@dataclass
class Connection:
    """An announcement being read: at most one line of _MAX_LINE bytes, within _CONNECTION_TIMEOUT_S."""

    sock: socket.socket
    opened: float
    data: bytearray = field(default_factory=bytearray)


class Listener:
    """The process's TCP listener for announcements and its confirmation thread, shared by
    every SlurmRunner of the process."""

    def __init__(self, params: SlurmParams) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._followed: dict[str, tuple[Tracked, Follower]] = {}  # by Slurm id
        self._pending: dict[str, Pending] = {}  # announced, waiting for Slurm to agree
        self._early: dict[str, tuple[str, float]] = {}  # announced before submit/recover followed it
        self._stats: Counter[str] = Counter()
        self._latencies: dict[int, deque[float]] = {}  # by runner, the latest _KEPT_LATENCIES
        self._stopping = False
        self.state_file = params.state_file
        self._state = ListenerState(self.state_file)
        self.secret = self._state.secret or secrets.token_bytes(32)
        host = params.listen_host
        self.announce_host = params.announce_host or socket.gethostname()
        try:
            self.sock = self._bind(host, self._state.port or params.listen_port)
        except BaseException:
            self._state.release()
            raise
        self.port = self.sock.getsockname()[1]
        self._state.save(self.port, self.secret)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._connections: dict[int, Connection] = {}
        self._serve_thread = threading.Thread(target=self._serve, name="slurm-listener", daemon=True)
        self._confirm_thread = threading.Thread(target=self._confirm_loop, name="slurm-confirm", daemon=True)
        self._serve_thread.start()
        self._confirm_thread.start()
        log.info("listening for Slurm job announcements on %s:%d (state file %s)", host or "*", self.port,
                 self.state_file)

    # -- the socket -----------------------------------------------------------------------

    def _bind(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if port == 0 or exc.errno != errno.EADDRINUSE:
                sock.close()
                raise RunnerError(f"cannot listen for Slurm announcements on {host or '*'}:{port}: {exc}") from exc
            # our state file is locked by us, so no worker of ours has it: a stranger does
            log.warning("port %d of %s is taken by another program: listening on a new port; jobs "
                        "submitted before are left to reconciliation", port, self.state_file)
            sock.bind((host, 0))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def token(self, job_id: str) -> str:
        return announcement_token(self.secret, job_id)

    # -- followed jobs ----------------------------------------------------------------

    def follow(self, job: Tracked, runner: Follower, *, check_early: bool = True) -> None:
        with self._cond:
            self._followed[job.external_id] = (job, runner)
        if check_early:
            self.check_early(job, runner)

    def check_early(self, job: Tracked, runner: Follower) -> None:
        """An announcement heard before the job was followed (a quick job, a restarted
        worker hearing a job before its redelivered launch): confirm it now."""
        with self._cond:
            early = self._early.pop(job.external_id, None)
            if early is not None and early[0] == job.job_id:
                self._queue(job, runner, early[1])

    def hint_followed(self, job: Tracked, runner: Follower, *, once: bool = False) -> None:
        """Confirm a followed job's state now, as if it had announced its end (`once`: look
        only once)."""
        with self._cond:
            if job.external_id not in self._followed:
                self._followed[job.external_id] = (job, runner)
            self._queue(job, runner, time.monotonic(), once=once)

    def take(self, external_id: str, runner: Follower) -> bool:
        """Stop following a job; True for the one caller that gets to report it."""
        with self._cond:
            self._pending.pop(external_id, None)
            entry = self._followed.get(external_id)
            if entry is None or entry[1] is not runner:
                return False
            del self._followed[external_id]
            return True

    def forget(self, runner: Follower) -> None:
        """A runner closed: its jobs keep running; a later process recovers them."""
        with self._cond:
            for table in (self._followed, self._pending):
                for key in [key for key, value in table.items()
                            if (value[1] if isinstance(value, tuple) else value.runner) is runner]:
                    del table[key]
            self._latencies.pop(id(runner), None)

    def _queue(self, job: Tracked, runner: Follower, heard_at: float, *, once: bool = False) -> bool:
        """(lock held) Ask Slurm about this job soon, with the others announced about now;
        False if that is already planned."""
        pending = self._pending.get(job.external_id)
        if pending is not None:
            pending.once = pending.once and once
            return False
        # the batch script exits a moment after it announced: give slurmd that moment
        self._pending[job.external_id] = Pending(job, runner, heard_at, time.monotonic() + 0.02, once=once)
        self._cond.notify_all()
        return True

    # -- the selector thread ----------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            timeout = _CONNECTION_TIMEOUT_S if self._connections else None
            try:
                events = self._selector.select(timeout)
            except OSError as exc:
                if self._stopping:
                    return
                log.error("the Slurm listener cannot wait for announcements (%s); trying again in 1 s", exc)
                time.sleep(1)
                continue
            for key, _ in events:
                try:
                    if key.data is None:
                        self._accept()
                    elif isinstance(key.data, Connection):
                        self._read(key.data)
                    else:
                        self._wake_r.recv(64)
                except Exception:  # noqa: BLE001 - one bad connection must not stop the listener
                    log.exception("handling an announcement failed")
                    if isinstance(key.data, Connection):
                        self._drop(key.data)
            now = time.monotonic()
            for conn in [c for c in self._connections.values() if now - c.opened > _CONNECTION_TIMEOUT_S]:
                self._count("timed_out")
                self._drop(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accepting an announcement failed: %s", exc)
                return
            if len(self._connections) >= _MAX_CONNECTIONS:
                self._count("refused_busy")
                sock.close()
                continue
            sock.setblocking(False)
            conn = Connection(sock, time.monotonic())
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Connection) -> None:
        try:
            chunk = conn.sock.recv(_MAX_LINE + 1 - len(conn.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        conn.data += chunk
        if b"\n" in conn.data:
            line = bytes(conn.data).split(b"\n", 1)[0]
            self._drop(conn)
            self._heard(line)
        elif not chunk or len(conn.data) > _MAX_LINE:
            self._count("malformed")
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        self._connections.pop(conn.sock.fileno(), None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _heard(self, line: bytes) -> None:
        """One announcement: checked, then queued for confirmation (never believed)."""
        heard_at = time.monotonic()
        parts = line.decode("ascii", errors="replace").split()
        if (len(parts) != 5 or parts[0] != ANNOUNCE_PREFIX or not JOB_ID.match(parts[1])
                or not SLURM_ID.match(parts[2]) or not re.match(r"^\d{1,3}$", parts[3])
                or not _TOKEN.match(parts[4])):
            self._count("malformed")
            return
        job_id, external_id, token = parts[1], parts[2], parts[4]
        if not hmac.compare_digest(token, self.token(job_id)):
            self._count("bad_token")
            if self._stats["bad_token"] <= 10:  # a flood must not fill the log
                log.warning("ignoring an announcement for job %s with a wrong token", job_id)
            return
        with self._cond:
            entry = self._followed.get(external_id)
            if entry is None:
                self._stats["early"] += 1
                self._remember_early(external_id, job_id, heard_at)
                return
            job, runner = entry
            if job.job_id != job_id:
                self._stats["mismatched"] += 1
                return
            self._stats["accepted" if self._queue(job, runner, heard_at) else "duplicate"] += 1

    def _remember_early(self, external_id: str, job_id: str, heard_at: float) -> None:
        """(lock held) Bounded: at most _MAX_EARLY, none older than _EARLY_TTL_S."""
        while self._early and (len(self._early) >= _MAX_EARLY or
                               heard_at - next(iter(self._early.values()))[1] > _EARLY_TTL_S):
            del self._early[next(iter(self._early))]
        self._early.pop(external_id, None)
        self._early[external_id] = (job_id, heard_at)

    def _count(self, what: str) -> None:
        with self._lock:
            self._stats[what] += 1

    def stats_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def latencies_snapshot(self, runner: Follower) -> list[float]:
        with self._lock:
            return list(self._latencies.get(id(runner), []))

    # -- the confirmation thread --------------------------------------------------------

    def _confirm_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    due = [p for p in self._pending.values() if p.due <= now]
                    if due:
                        break
                    wait = min((p.due for p in self._pending.values()), default=None)
                    self._cond.wait(None if wait is None else max(0.0, wait - now))
                if self._stopping:
                    return
                for pending in due:
                    pending.due = float("inf")  # in hand: not taken again meanwhile
            by_runner: dict[int, list[Pending]] = {}
            for pending in due:
                by_runner.setdefault(id(pending.runner), []).append(pending)
            for batch in by_runner.values():
                try:
                    self._confirm(batch)
                except Exception:  # noqa: BLE001 - the thread must live on; reconciliation covers these
                    log.exception("confirming %d announced Slurm jobs failed", len(batch))
                    with self._cond:
                        for pending in batch:
                            if self._pending.get(pending.job.external_id) is pending:
                                del self._pending[pending.job.external_id]

    def _confirm(self, batch: list[Pending]) -> None:
        runner = batch[0].runner
        try:
            verdicts = runner.confirm([p.job for p in batch])
        except Exception as exc:  # noqa: BLE001 - Slurm unreachable: try again later
            log.warning("cannot confirm %d announced Slurm jobs yet: %s", len(batch), exc)
            verdicts = {p.job.external_id: None for p in batch}
        now = time.monotonic()
        for pending in batch:
            verdict = verdicts.get(pending.job.external_id)
            if verdict is None:
                with self._cond:
                    if self._pending.get(pending.job.external_id) is not pending:
                        continue
                    if pending.once:
                        del self._pending[pending.job.external_id]
                        continue
                    if now - pending.heard_at > runner.confirm_timeout_s:
                        del self._pending[pending.job.external_id]
                        self._stats["unconfirmed"] += 1
                        log.info("Slurm does not say job %s (%s) ended, %.0fs after its announcement: left to "
                                 "reconciliation", pending.job.job_id, pending.job.external_id, now - pending.heard_at)
                        continue
                    pending.attempts += 1
                    pending.due = now + min(2.0, 0.05 * 2 ** pending.attempts)
                    self._cond.notify_all()
                continue
            if isinstance(verdict, StoodDown):
                log.warning("Slurm job %s of job %s was a duplicate copy and stood down",
                            pending.job.external_id, pending.job.job_id)
                self.take(pending.job.external_id, runner)
                continue
            if isinstance(verdict, Completion) and self.take(pending.job.external_id, runner):
                with self._lock:
                    kept = self._latencies.setdefault(id(runner), deque(maxlen=_KEPT_LATENCIES))
                    kept.append(time.monotonic() - pending.heard_at)
                runner.emit(verdict, pending.job)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        for thread in (self._serve_thread, self._confirm_thread):
            if thread is not threading.current_thread():
                thread.join(10)
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._selector.close()
        for sock in (self.sock, self._wake_r, self._wake_w):
            sock.close()
        self._state.release()


LISTENERS: PerProcess[Listener] = PerProcess("Slurm listener", "slurm")


def open_listener(params: SlurmParams, runner: Follower) -> Listener:
    """The process's listener (opened now if it is not open yet), with `runner` among its users."""
    def check(current: Listener) -> None:
        if params.state_file and params.state_file != current.state_file:
            log.warning("one Slurm listener per process: staying on %s, not %s", current.state_file,
                        params.state_file)

    return LISTENERS.open(runner, lambda: Listener(params), check)


def close_listener(listener: Listener, runner: Follower) -> None:
    """`runner` no longer uses the listener; the last user closes it (jobs keep running)."""
    listener.forget(runner)
    LISTENERS.close(runner, Listener.close)
