"""A destination's runner behind staging, for a worker that shares no filesystem with the
submitter: it rebuilds the job's directory on its own side, stages the inputs in before the
runner starts the job there, and stages the outputs, stdout, stderr, end note and exit code
back into the submitter's job directory before the end is reported.

The exit code travels last: the finish step takes a job's end only from the exit code in
its directory, so nothing is recorded (`ok` least of all) before the outputs are home. Each
file moves into place only once its sha256 matched on the submitter's side; one that never
arrives whole is left out, and the finish step then names it as not produced. Every step is
safe to run again: a worker killed mid-transfer redoes it after its restart (the runner's
`recover`), and a repeated end is recorded once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from galaxy_tasks import jobdir
from galaxy_tasks.errors import RunnerError, RunnerFull, StagingError, StagingUnreachable
from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import HashBudget, JobDir
from galaxy_tasks.logs import event
from galaxy_tasks.runners.base import Completion, Launch, Rebuild, Report, Runner, Tracked
from galaxy_tasks.staging.http import Http
from galaxy_tasks.staging.rsync import DIRECTORY, STAGE_OUT, Rsync
from galaxy_tasks.staging.settings import StagingSettings
from galaxy_tasks.staging.tokens import OUT

log = logging.getLogger(__name__)

#: what the worker keeps of a staged job to send its files home after a restart
STATE_FILE = "staging.json"
INPUTS = "inputs"
#: times an output whose check failed on arrival is sent again before it is left out
SEND_ATTEMPTS = 3
#: a staged-out job's remains are removed from the staging root after this long
KEEP_S = 24 * 3600.0
#: the largest staged file rewritten to name the copies (a job script, a config file)
MAX_REWRITE_BYTES = 16 << 20


class StagedRunner(Runner):
    """The runner of a destination with `shared_filesystem: false`, wrapped in staging."""

    name = "staged"

    def __init__(self, build: Callable[[Report], Runner], report: Report, settings: StagingSettings,
                 transfer: Rsync | Http | None = None) -> None:
        """`build(report)` makes the wrapped runner, which reports through the stage-out."""
        self.settings = settings
        self.root = Path(settings.root)
        self.transfer = transfer or (Http(settings) if settings.transfer == "http" else Rsync(settings))
        self.report = report
        self._senders = ThreadPoolExecutor(2, thread_name_prefix="stage-out")
        self.inner = build(self._send_then_report)
        self.params, self.destination, self.host = self.inner.params, self.inner.destination, self.inner.host

    # -- the runner interface ------------------------------------------------------------

    def submit(self, launch: Launch) -> str:
        if launch.rebuild is None:
            raise RunnerError(f"job {launch.job_id} reached a staging worker without what to stage")
        local = JobDir(self.root / launch.job_id, launch.rebuild.token)
        # one stage-in of a job at a time on this host: a launch taken over while its first
        # message still stages waits, then finds the job started (and follows it) or the
        # inputs that arrived whole
        with self._locked(launch.job_id):
            if not local.claimed():
                try:
                    self._stage_in(launch, local)
                except OSError as exc:  # the worker's own side: its staging root
                    raise StagingError(f"staging the job in failed: {exc}") from None
            return self.inner.submit(replace(launch, job_dir=local.root, script=local.script, rebuild=None))

    def has_room(self) -> bool:
        return self.inner.has_room()

    def cancel(self, tracked: Tracked) -> None:
        self.inner.cancel(self._local(tracked))

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        """A job that ended counts as ended only once its files are home (one whose staged
        directory is gone has nothing to send: its end stands as the runner tells it)."""
        found = self.inner.status([self._local(job) for job in jobs])
        for job_id, completion in found.items():
            staged = (self.root / job_id / STATE_FILE).exists()
            if completion is not None and staged and not self._stage_out_logged(job_id):
                found[job_id] = None
        return found

    def recover(self, jobs: Sequence[Tracked]) -> None:
        self.inner.recover([self._local(job) for job in jobs])

    def close(self) -> None:
        self.inner.close()
        self._senders.shutdown(wait=True)

    # -- stage in ------------------------------------------------------------------------

    def _stage_in(self, launch: Launch, local: JobDir) -> None:
        rebuild = launch.rebuild
        assert rebuild is not None
        relative = [path for path in (*rebuild.inputs, *rebuild.returns, *rebuild.rewrite) if not os.path.isabs(path)]
        if relative:
            raise RunnerError(f"input {relative[0]!r} is not an absolute path: a destination without a shared "
                              "filesystem stages only absolute paths")
        started = time.monotonic()
        transfer = self.transfer.bound(launch.job_id, rebuild.credentials)
        wanted = transfer.digests(rebuild.inputs)
        missing = [path for path, found in wanted.items() if found is None]
        if missing:
            raise StagingError(f"input not found on the submitter's host: {', '.join(missing)}")
        need = sum(found[0] for found in wanted.values() if found is not None and found != DIRECTORY)
        self._make_room(launch.job_id, need)
        moves = {str(launch.job_dir): str(local.root),
                 **{path: str(local.root / _copy(path)) for path in (*rebuild.inputs, *rebuild.returns)}}
        jobdir.create(local.root, _rewrite(rebuild.command, moves),
                      {name: _rewrite(value, moves) for name, value in rebuild.environment.items()},
                      rebuild.setup_file, token=rebuild.token)
        self._fetch(transfer, rebuild, local, wanted)
        for path in rebuild.returns:  # where the job writes what goes home
            (local.root / _copy(path)).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        rewritten = _rewrite_files(local.root, rebuild.rewrite, moves)
        came_in = {_copy(path): found[1] for path, found in wanted.items() if found is not None and found != DIRECTORY}
        jobdir.write_file(local.root / STATE_FILE, json.dumps(
            {"remote": str(launch.job_dir), "outputs": list(rebuild.outputs), "token": rebuild.token,
             "returns": list(rebuild.returns), "came_in": came_in, "rewritten": rewritten,
             "credentials": {OUT: rebuild.credentials[OUT]} if OUT in rebuild.credentials else {}}), 0o600)
        event(log, "staged_in", job_id=launch.job_id, files=len(wanted), bytes=need,
              seconds=round(time.monotonic() - started, 3))

    def _fetch(self, transfer: Rsync | Http, rebuild: Rebuild, local: JobDir,
               wanted: dict[str, tuple[int, str] | None]) -> None:
        """The inputs into `inputs/`, each checked against its size and sha256 on the
        submitter's host; a copy left whole by an earlier try is kept."""
        inputs, part = local.root / INPUTS, local.root / (INPUTS + ".part")
        files = {path: found for path, found in wanted.items() if found != DIRECTORY}
        if inputs.is_dir() and not _mismatched(inputs, files):
            return
        if inputs.is_dir() and not part.exists():
            inputs.rename(part)  # rsync sends only what differs
        shutil.rmtree(inputs, ignore_errors=True)
        part.mkdir(mode=0o700, exist_ok=True)
        if files:
            transfer.fetch(list(files), part)
        for path in wanted.keys() - files.keys():  # a directory input's directories, empty ones too
            (part / path.lstrip("/")).mkdir(mode=0o700, parents=True, exist_ok=True)
        crash_point("stage_in", rebuild.token)  # fetched, not yet checked
        bad = _mismatched(part, files)
        if bad:
            shutil.rmtree(part, ignore_errors=True)
            raise StagingError(f"input arrived other than it left the submitter's host (size or sha256 differ): "
                               f"{', '.join(bad)}")
        part.rename(inputs)

    def _make_room(self, job_id: str, need: int) -> None:
        """Room for `need` more bytes under the staging root, after removing what is old."""
        if need > self.settings.max_bytes:
            raise StagingError(f"the job's inputs ({need} bytes) are larger than the staging root's bound "
                               f"(max_bytes {self.settings.max_bytes})")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        used = 0
        for entry in os.scandir(self.root):
            if entry.name == job_id or entry.name == _LOCKS:
                continue
            if _finished_long_ago(Path(entry.path)):
                shutil.rmtree(entry.path, ignore_errors=True)
                (self.root / _LOCKS / entry.name).unlink(missing_ok=True)
            else:
                used += _du(Path(entry.path))
        if used + need > self.settings.max_bytes:
            raise RunnerFull(f"staging root {self.root} holds {used} bytes; {need} more would pass max_bytes "
                             f"{self.settings.max_bytes}")

    # -- stage out -----------------------------------------------------------------------

    def _send_then_report(self, completion: Completion) -> None:
        """The wrapped runner saw the job end: its files go home (off the runner's thread,
        which hears every job's end), then the end is reported."""
        def send() -> None:
            if self._stage_out_logged(completion.job_id):
                self.report(completion)

        self._senders.submit(send)

    def _stage_out_logged(self, job_id: str) -> bool:
        """Whether the job's files are home; if not, the next status check or a restart
        tries again (the submitter's host unreachable for a while included)."""
        try:
            self.stage_out(job_id)
        except (StagingError, StagingUnreachable, OSError, ValueError) as exc:
            event(log, "stage_out_failed", level=logging.WARNING, job_id=job_id, error=str(exc))
            return False
        return True

    def stage_out(self, job_id: str) -> None:
        """Send the job's outputs, then its stdout, stderr, end note and exit code, into the
        submitter's job directory; each moves into place only once checked there. One at a
        time per job on this host (the runner's end and a status check may both ask)."""
        with self._locked(job_id):
            self._stage_out(job_id)

    def _stage_out(self, job_id: str) -> None:
        local = JobDir(self.root / job_id)
        state = json.loads(jobdir.read_small(local.root / STATE_FILE, 1 << 20) or "null")
        if not isinstance(state, dict) or not isinstance(state.get("remote"), str):
            raise StagingError(f"job {job_id} has no staging record under {self.root}")
        remote, started = state["remote"], time.monotonic()
        if (local.root / _SENT).exists():
            return
        transfer = self.transfer.bound(job_id, state.get("credentials") or {})
        # each file sent and the place it moves to on the submitter's side
        places = {f"{local.working.name}/{path}": f"{local.working.name}/{path}" for path in state.get("outputs") or []}
        rewritten, came_in = set(state.get("rewritten") or ()), state.get("came_in") or {}
        places.update((path, "/" + path[len(INPUTS) + 1:]) for path in _returned(local.root, state.get("returns") or ())
                      if path not in rewritten)
        ends = [path.name for path in (local.stdout, local.stderr, local.end_note_file, local.exit_code_file)]
        # no link followed: a link the job left as an output is not sent, and so not produced
        digests = {path: found for path in [*places, *ends] if (found := _digest(local.root, path)) is not None}
        for path in [path for path in digests if came_in.get(path) == digests[path]]:
            del digests[path]  # a staged file the job left as it came: already home
        places.update((path, path) for path in ends)
        transfer.send(local.root, list(digests), f"{remote}/{STAGE_OUT}")
        left_out = self._commit(transfer, local.root, remote, digests, places,
                                [path for path in places if path in digests and path not in ends])
        crash_point("stage_out", job_id)  # the outputs home, the end not yet
        if self._commit(transfer, local.root, remote, digests, places, [path for path in ends if path in digests],
                        last=True):
            raise StagingError(f"the end of job {job_id} did not arrive whole on the submitter's host")
        jobdir.write_file(local.root / _SENT, "", 0o600)
        shutil.rmtree(local.root / INPUTS, ignore_errors=True)
        shutil.rmtree(local.working, ignore_errors=True)
        event(log, "staged_out", job_id=job_id, files=len(digests), left_out=left_out or None,
              seconds=round(time.monotonic() - started, 3))

    def _commit(self, transfer: Rsync | Http, root: Path, remote: str, digests: dict[str, str],
                places: dict[str, str], paths: list[str], last: bool = False) -> list[str]:
        """Move these sent files to their places once checked, sending again those that
        arrived other than they left; the ones that never arrived whole (`last`: the
        staging area is removed once all did)."""
        pending = transfer.commit(remote, [(path, digests[path], places[path]) for path in paths], last)
        for _ in range(SEND_ATTEMPTS - 1):
            if not pending:
                break
            transfer.send(root, pending, f"{remote}/{STAGE_OUT}")
            pending = transfer.commit(remote, [(path, digests[path], places[path]) for path in pending], last)
        if pending:
            event(log, "stage_out_rejected", level=logging.WARNING, files=pending)
        return pending

    @contextlib.contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        locks = self.root / _LOCKS
        locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(locks / job_id, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _local(self, tracked: Tracked) -> Tracked:
        return replace(tracked, job_dir=self.root / tracked.job_id)


_SENT = "staged-out"
_LOCKS = ".locks"


def _copy(path: str) -> str:
    """Where the local copy of a submitter's absolute path is, relative to the job's directory."""
    return f"{INPUTS}/{path.lstrip('/')}"


def _rewrite(text: str, moves: dict[str, str]) -> str:
    """`text` with each submitter's path replaced by its local copy: a whole path only (not
    one that is the end of a longer path, nor the start of a longer name; a directory's
    path followed by more of the path is), the longest first."""
    if not moves:
        return text
    olds = "|".join(re.escape(old) for old in sorted(moves, key=len, reverse=True))
    return re.sub(rf"(?<![\w./-])({olds})(?![\w.-])", lambda found: moves[found[1]], text)


def _rewrite_files(root: Path, paths: Sequence[str], moves: dict[str, str]) -> list[str]:
    """Rewrite the staged copies of these files (a directory: the files below it) as the
    command is; the ones rewritten, relative to `root` (they never go home). A path that
    was not staged has nothing to rewrite."""
    done = []
    for path in paths:
        copy = root / _copy(path)
        found = [copy] if copy.is_file() else sorted(copy.rglob("*")) if copy.is_dir() else []
        for file in found:
            if file.is_symlink() or not file.is_file():
                continue
            if file.stat().st_size > MAX_REWRITE_BYTES:
                raise StagingError(f"{path} is larger than {MAX_REWRITE_BYTES} bytes: too large to rewrite")
            text = file.read_bytes().decode("utf-8", "surrogateescape")
            new = _rewrite(text, moves)
            if new != text:
                file.write_bytes(new.encode("utf-8", "surrogateescape"))
            done.append(str(file.relative_to(root)))
    return done


def _returned(root: Path, returns: Sequence[str]) -> list[str]:
    """The regular files the job left at its returns' copies (a directory: below it, no
    link followed), relative to `root`."""
    found = []
    for path in returns:
        copy = root / _copy(path)
        if copy.is_file() and not copy.is_symlink():
            found.append(_copy(path))
        elif copy.is_dir() and not copy.is_symlink():
            for base, _dirs, files in os.walk(copy):
                found += [str(Path(base, name).relative_to(root)) for name in sorted(files)
                          if stat.S_ISREG(os.lstat(os.path.join(base, name)).st_mode)]
    return found


def _digest(root: Path, relative: str) -> str | None:
    fd = jobdir.open_beneath(root, relative)
    if fd is None:
        return None
    try:
        return HashBudget(bytes_left=1 << 62, deadline=float("inf")).digest(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _mismatched(where: Path, wanted: dict[str, tuple[int, str] | None]) -> list[str]:
    """The inputs whose copy under `where` is missing, or differs in size or sha256."""
    budget = HashBudget(bytes_left=1 << 62, deadline=float("inf"))
    return [path for path, found in wanted.items()
            if jobdir.file_digest(where / path.lstrip("/"), budget) != found]


def _finished_long_ago(path: Path) -> bool:
    """A staged job's directory whose files went home (or whose stage-in failed) more than
    KEEP_S ago: nothing will read it again."""
    marker = path / _SENT if (path / _SENT).exists() else path if not (path / STATE_FILE).exists() else None
    try:
        return marker is not None and path.is_dir() and time.time() - marker.stat().st_mtime > KEEP_S
    except OSError:
        return False


def _du(path: Path) -> int:
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total
