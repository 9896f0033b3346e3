"""The Galaxy job runner plugin: Galaxy's jobs run in galaxy-tasks.

    runners:
      gt:
        load: galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner
        workers: 2
        broker_url: redis://127.0.0.1:6379/0
        steps_queue: galaxy_tasks        # default
        events: true                     # default; false: submit only, nothing ends in Galaxy
        instance: main                   # default server_name: the same for every handler
        events_queue: galaxy.main        # default galaxy.<instance>
        environment: {LC_ALL: C}         # variables every job gets (galaxy-tasks jobs inherit none)
        run_as_real_user: false          # default; true: jobs run as real_system_username says
        real_user_map: {}                # a site's Galaxy user -> Unix user, consulted first
        entry_points_timeout: 3600       # default; seconds an interactive tool's entry points are looked for
    execution:
      environments:
        tasks:
          runner: gt
          galaxy_tasks_destination: sge_big  # absent: galaxy-tasks' routing rules decide
          galaxy_tasks_cores: 4              # or cores, local_slots, env GALAXY_SLOTS
          galaxy_tasks_memory_mb: 8000       # or memory_mb, mem (GB, as TPV), env GALAXY_MEMORY_MB
          galaxy_tasks_walltime: "04:00:00"  # or walltime, walltime_s
          galaxy_tasks_gpus: 1               # or gpus (TPV's)
          native_specification: "--partition=gpu"  # the job's own options: galaxy-tasks' allow_native decides
          metadata_strategy: directory_celery  # metadata in Galaxy's warm Celery worker, not in the job

Galaxy prepares each job as for its own runners (command line, metadata, job script); the
plugin submits it through galaxy-tasks' task contract with an id derived from Galaxy's job
id, and learns that it ended from job events read by one consumer thread. There is no
monitor thread: nothing here looks at running jobs in a loop (`check_watched_item` is
never called; `stats_file` shows the count), so Galaxy's own limits (walltime, output_size,
a tool's time limit) go to galaxy-tasks with the job, which keeps them (docs/galaxy.md).
An interactive tool's running job alone gets a lookout that asks Galaxy for its entry points
until Galaxy has them (galaxy_tasks/galaxy/entry_points.py).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from galaxy import model
from galaxy.jobs.runners import AsynchronousJobRunner, AsynchronousJobState
from galaxy.util import asbool

from galaxy_tasks import spec as task_spec
from galaxy_tasks.errors import SpecError
from galaxy_tasks.galaxy import settings as runner_settings
from galaxy_tasks.galaxy.client import TaskClient
from galaxy_tasks.galaxy.entry_points import Lookouts
from galaxy_tasks.galaxy.events import Delivery, EventConsumer, JobEvent
from galaxy_tasks.galaxy.spec import (
    GalaxyJob,
    GalaxyLimits,
    MappingError,
    galaxy_job_id,
    real_system_user,
    to_spec,
    tool_files,
    walltime,
)
from galaxy_tasks.galaxy.states import UNKNOWN, fail_message, galaxy_runner_state, galaxy_state
from galaxy_tasks.galaxy.stats import Stats
from galaxy_tasks.runas import mark_for_handover

log = logging.getLogger(__name__)

__all__ = ("GalaxyTasksJobRunner",)

_STOP = None
REQUEUE_DELAY_S = 1.0


class GalaxyTasksJobRunner(AsynchronousJobRunner):
    runner_name = "GalaxyTasksRunner"
    # Galaxy's worker threads (queue_job, stop_job) and our event threads; no monitor thread.
    start_methods = ["_init_noop_monitor", "_init_worker_threads", "_init_event_threads"]

    def __init__(self, app: Any, nworkers: int, **kwargs: Any) -> None:
        self.settings = runner_settings.from_kwargs(kwargs, app.config.server_name)
        super().__init__(app, nworkers)
        self.client = TaskClient(self.settings)
        self.stats = Stats(self.settings.stats_file)
        self._wrappers: dict[str, Any] = {}  # galaxy-tasks job id -> Galaxy's job wrapper
        self._applied: dict[str, int] = {}  # galaxy-tasks job id -> seq of the last event applied
        self._lock = threading.Lock()
        self._to_announce: set[str] = set()
        self._consumer: EventConsumer | None = None
        self._event_queues: list[queue.SimpleQueue] = []
        self._event_threads: list[threading.Thread] = []
        self.lookouts = Lookouts(bound_s=self.settings.entry_points_timeout,
                                 gave_up=lambda task_id: self.stats.bump("entry_points_gave_up"),
                                 counted=lambda looking: self.stats.set("looking_for_entry_points", looking))
        log.info("galaxy-tasks runner: broker %s, steps queue %s, events %s", self.settings.safe_broker_url,
                 self.settings.steps_queue, self.settings.events_queue if self.settings.events else "off")

    # -- Galaxy's runner interface -------------------------------------------------------

    def queue_job(self, job_wrapper: Any) -> None:
        """Prepare the job as Galaxy's own runners do, then submit it to galaxy-tasks."""
        if not self.prepare_job(job_wrapper, include_metadata=self._embed_metadata(job_wrapper)):
            return
        ajs = AsynchronousJobState(job_wrapper, job_wrapper.job_destination, files_dir=job_wrapper.working_directory)
        try:
            script = self.get_job_file(job_wrapper, exit_code_path=ajs.exit_code_file, shell=job_wrapper.shell)
            self.write_executable_script(ajs.job_file, script, job_io=job_wrapper.job_io)
            spec = self._spec(job_wrapper, ajs)
            task_spec.parse(spec)  # what galaxy-tasks would refuse is refused here, before sending
            if "handover_dir" in spec:  # Galaxy's job directory may be handed to the job's user, for this job only
                mark_for_handover(Path(spec["handover_dir"]), spec["id"])
        except (MappingError, SpecError) as exc:
            ajs.fail_message = f"galaxy-tasks cannot run this job: {exc}"
            ajs.stop_job = False
            self.fail_job(ajs)
            self.stats.bump("refused_before_sending")
            return
        except Exception:
            log.exception("(%s) failure preparing the galaxy-tasks job", job_wrapper.get_id_tag())
            job_wrapper.fail("failure preparing job script", exception=True)
            return
        if job_wrapper.get_state() in (model.Job.states.DELETED, model.Job.states.STOPPED):
            if job_wrapper.cleanup_job in ("always", "onsuccess"):
                job_wrapper.cleanup()
            return
        _write_json(_spec_file(job_wrapper), spec)
        # The id is recorded before the message is sent: a crash in between leaves a job that
        # recovery asks galaxy-tasks about (and resends), never one prepared twice.
        job_wrapper.set_external_id(spec["id"])
        self._watch(spec["id"], job_wrapper)
        try:
            self.client.submit(spec)
        except Exception:
            log.exception("(%s) could not submit to galaxy-tasks at %s", job_wrapper.get_id_tag(),
                          self.settings.safe_broker_url)
            self._forget(spec["id"])
            job_wrapper.fail("Unable to submit this job to galaxy-tasks, please retry it later")
            return
        self.stats.bump("submitted")
        log.info("(%s) submitted to galaxy-tasks as %s", job_wrapper.get_id_tag(), spec["id"])

    def stop_job(self, job_wrapper: Any) -> None:
        external_id = job_wrapper.get_job().get_job_runner_external_id()
        if not external_id:
            return
        self.client.cancel(external_id)
        self._forget(external_id)  # its end, if it comes, finds the job in Galaxy's database
        self.stats.bump("cancel_sent")
        log.info("(%s/%s) cancel sent to galaxy-tasks", job_wrapper.get_id_tag(), external_id)

    def recover(self, job: Any, job_wrapper: Any) -> None:
        """A job Galaxy found unfinished at start: one never submitted is queued again; one
        submitted is watched, and galaxy-tasks is asked for its current state."""
        external_id = job.get_job_runner_external_id()
        if not external_id:
            self.put(job_wrapper)
            return
        self._watch(external_id, job_wrapper)
        self.stats.bump("recovered")
        log.info("(%s/%s) recovered: watching for its events", job.id, external_id)
        if job.state == model.Job.states.RUNNING:
            self._look_for_entry_points(external_id, job_wrapper)
        if self.settings.events:
            with self._lock:
                self._to_announce.add(external_id)

    def check_watched_item(self, job_state: AsynchronousJobState) -> AsynchronousJobState:
        """Never called: no job is given to Galaxy's monitor. Counted so a test can say so."""
        self.stats.bump("check_watched_item")
        return job_state

    def shutdown(self) -> None:
        if self._consumer is not None:
            self._consumer.stop()
        self.lookouts.stop_all()
        for work in self._event_queues:
            work.put(_STOP)
        for thread in self._event_threads:
            thread.join(self.app.config.monitor_thread_join_timeout or 5)
        super().shutdown()
        self.client.close()
        self.stats.bump("shutdown")

    # -- events ---------------------------------------------------------------------------

    def _init_event_threads(self) -> None:
        """Event threads (one job's events always go to the same one, in order) and the
        consumer that feeds them; `events: false` leaves them off (jobs are submitted only)."""
        if not self.settings.events:
            return
        for index in range(max(1, self.nworkers)):
            work: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(target=self._apply_events, args=(work,), daemon=True,
                                      name=f"{self.runner_name}.events-{index}")
            thread.start()
            self._event_queues.append(work)
            self._event_threads.append(thread)
        self._consumer = EventConsumer(self.settings.broker_url, self.settings.events_queue, self._dispatch,
                                       idle=self._announce, name=f"{self.runner_name}.consumer",
                                       signed=self.settings.signing, ended=self._forget)
        self._consumer.start()

    def _dispatch(self, delivery: Delivery) -> None:
        work = self._event_queues[hash(delivery.event.job_id) % len(self._event_queues)]
        work.put(delivery)

    def _apply_events(self, work: queue.SimpleQueue) -> None:
        while (delivery := work.get()) is not _STOP:
            with self.app.model.session():
                try:
                    self._apply(delivery.event)
                except Exception:
                    log.exception("could not apply galaxy-tasks event %s; it will come again", delivery.event)
                    time.sleep(REQUEUE_DELAY_S)  # a database that is away is not asked again at once
                    delivery.requeue()
                    continue
            delivery.ack()

    def _apply(self, event: JobEvent) -> None:
        """Record in Galaxy what one event means; returns once Galaxy has recorded it."""
        job_id = galaxy_job_id(event.job_id)
        job = self.sa_session.get(model.Job, job_id) if job_id is not None else None
        if job is None or job.get_job_runner_external_id() != event.job_id or job.finished:
            self._forget(event.job_id)  # not watched any more: nothing of it stays in memory
            self._ignored(event)
            return
        with self._lock:
            applied = self._applied.get(event.job_id, 0)
        if (event.state == UNKNOWN and applied) or (event.state != UNKNOWN and event.seq <= applied):
            # older than what Galaxy recorded, or "never heard of it" about a job that was heard of
            self._ignored(event)
            return
        job_wrapper = self._wrapper(event.job_id, job)
        if event.state == UNKNOWN:
            self._resend(job_wrapper, event.job_id)
        elif event.terminal:
            self._end(job_wrapper, event)
        elif galaxy_state(event.state) == model.Job.states.RUNNING and job.state in (model.Job.states.QUEUED,
                                                                                      model.Job.states.RUNNING):
            if job.state == model.Job.states.QUEUED:
                job_wrapper.change_state(model.Job.states.RUNNING)
            self._look_for_entry_points(event.job_id, job_wrapper)
        elif (galaxy_state(event.state) == model.Job.states.QUEUED == job.state and event.reason
              and job.info != event.reason):
            # why it waits (a slot, a concurrency limit), as Galaxy's job info
            job_wrapper.change_state(model.Job.states.QUEUED, info=event.reason)
        with self._lock:
            self._applied[event.job_id] = max(event.seq, self._applied.get(event.job_id, 0))
        if event.terminal:
            self._forget(event.job_id)
        self.stats.bump("events_applied")

    def _end(self, job_wrapper: Any, event: JobEvent) -> None:
        ajs = AsynchronousJobState(job_wrapper, job_wrapper.job_destination,
                                   files_dir=job_wrapper.working_directory, job_id=event.job_id)
        ajs.register_cleanup_file_attribute("spec_file")
        ajs.spec_file = _spec_file(job_wrapper)
        ajs.stop_job = False  # galaxy-tasks has already ended it
        script_ended = os.path.exists(ajs.exit_code_file)
        stopped = event.state == "deleted" and job_wrapper.get_state() == model.Job.states.STOPPED
        if event.state == "ok" or stopped or (event.state == "error" and script_ended and event.runner_state is None):
            # Galaxy's own finish reads the exit code and the tool's output and decides
            # ok or error (and its resubmit rules for tool-detected errors); a job Galaxy
            # stopped is finished as its own runners do, keeping what its outputs hold
            if not self._embed_metadata(job_wrapper):
                self._handle_metadata_externally(job_wrapper, resolve_requirements=True)
            self.finish_job(ajs)
            self._record_metrics(job_wrapper.job_id, event)
            self.stats.bump("finished")
            return
        runner_state = event.runner_state
        if runner_state == "walltime_reached":  # which of the walltimes it was, in Galaxy's words
            runner_state = walltime(self._galaxy_job(job_wrapper, ajs))[1]
        ajs.runner_state = galaxy_runner_state(runner_state, ajs.runner_states)
        if event.state == "deleted":
            ajs.fail_message = "This job was cancelled in galaxy-tasks."
        else:
            ajs.fail_message = fail_message(runner_state, event.reason, event.refused)
        self.fail_job(ajs)
        self._record_metrics(job_wrapper.job_id, event)
        self.stats.bump("failed")

    def _record_metrics(self, galaxy_job_id: int, event: JobEvent) -> None:
        """galaxy-tasks' own measures of the run among Galaxy's job metrics (plugin
        `galaxy_tasks`), added to the job's row after Galaxy's finish or fail (added before,
        they were lost when the metadata was set in Galaxy's Celery worker)."""
        seconds, peak_kb = event.run_seconds, event.max_rss_kb
        if seconds is None and peak_kb is None:
            return
        try:
            job = self.sa_session.get(model.Job, galaxy_job_id)
            if job is None:
                return
            if seconds is not None:
                job.add_metric("galaxy_tasks", "runtime_seconds", seconds)
            if peak_kb is not None:
                job.add_metric("galaxy_tasks", "memory_peak_bytes", peak_kb * 1024)
            self.sa_session.commit()
        except Exception:  # noqa: BLE001 - a metric is not worth holding back the job's end
            log.exception("(%s) could not record galaxy-tasks' metrics", galaxy_job_id)
            self.sa_session.rollback()

    def _resend(self, job_wrapper: Any, task_id: str) -> None:
        """galaxy-tasks never recorded the job (its submit message was lost): send the
        same spec again, with the same id."""
        try:
            spec = _read_json(_spec_file(job_wrapper))
        except (OSError, ValueError):
            self._forget(task_id)
            job_wrapper.fail("This job was lost on its way to galaxy-tasks and cannot be sent again.")
            return
        self.client.submit(spec)
        self.stats.bump("resubmitted")

    def _announce(self) -> None:
        """On the consumer's thread: ask galaxy-tasks about recovered jobs, in one message."""
        with self._lock:
            ids, self._to_announce = self._to_announce, set()
        if ids:
            try:
                self.client.announce(ids, self.settings.events_queue)
            except Exception:
                log.exception("could not ask galaxy-tasks about %d recovered jobs; will retry", len(ids))
                with self._lock:
                    self._to_announce |= ids

    # -- interactive tools -------------------------------------------------------------------

    def _look_for_entry_points(self, task_id: str, job_wrapper: Any) -> None:
        """A running job of an interactive tool: look for its entry points at once, and
        again until Galaxy has them (what Galaxy's runners do from their monitor loops)."""
        if not getattr(job_wrapper.tool, "produces_entry_points", False):
            return
        if self.lookouts.start(task_id, lambda: self._entry_points_found(task_id, job_wrapper)):
            log.debug("(%s/%s) looking for its entry points", job_wrapper.job_id, task_id)

    def _entry_points_found(self, task_id: str, job_wrapper: Any) -> bool:
        """One look, on the job's lookout thread; True when there is nothing more to look
        for. A job whose container monitor failed is failed by Galaxy, as with its own
        runners, and ended in galaxy-tasks (its tool would otherwise run on, unreachable)."""
        with self.app.model.session():
            if job_wrapper.get_job().state != model.Job.states.RUNNING:  # stopped, or ended
                return True
            if not job_wrapper.check_for_entry_points():
                return False
            failed = job_wrapper.get_job().state == model.Job.states.ERROR
        if failed:
            self.stats.bump("entry_points_failed")
            try:
                self.client.cancel(task_id)
            except Exception:
                log.exception("(%s/%s) could not cancel the job whose container monitor failed",
                              job_wrapper.job_id, task_id)
        else:
            self.stats.bump("entry_points_configured")
            log.info("(%s/%s) entry points configured", job_wrapper.job_id, task_id)
        return True

    def _ignored(self, event: JobEvent) -> None:
        log.debug("ignored galaxy-tasks event %s/%s seq %s", event.job_id, event.state, event.seq)
        self.stats.bump("events_ignored")

    # -- helpers ---------------------------------------------------------------------------

    def _spec(self, job_wrapper: Any, ajs: AsynchronousJobState) -> dict[str, Any]:
        events_queue = self.settings.events_queue if self.settings.events else None
        return to_spec(self._galaxy_job(job_wrapper, ajs), environment=self.settings.environment,
                       events_queue=events_queue)

    def _galaxy_job(self, job_wrapper: Any, ajs: AsynchronousJobState) -> GalaxyJob:
        job = job_wrapper.get_job()
        destination = job_wrapper.job_destination
        run_as = self._run_as(job_wrapper, job)
        return GalaxyJob(
            server_name=self.settings.server_name,
            job_id=job.id,
            tool_id=job.tool_id,
            tool_version=job.tool_version,
            user=self._user(job_wrapper, job),
            attempt=sum(1 for s in job.state_history if s.state == model.Job.states.RESUBMITTED),
            job_file=ajs.job_file,
            stdout_file=ajs.output_file,
            stderr_file=ajs.error_file,
            exit_code_file=ajs.exit_code_file,
            params=dict(destination.params or {}),
            env=tuple(destination.env or ()),
            limits=self._limits(job_wrapper),
            run_as=run_as,
            handover_dir=os.path.normpath(job_wrapper.working_directory) if run_as else None,
            **_staged_files(job_wrapper, ajs),
        )

    def _limits(self, job_wrapper: Any) -> GalaxyLimits:
        """Galaxy's own limits on the job, which galaxy-tasks keeps (Galaxy's monitor loop,
        which would check them, never runs here)."""
        limits = self.app.job_config.limits
        delta = limits.walltime_delta
        timelimit = getattr(job_wrapper.tool, "timelimit", None)
        return GalaxyLimits(
            walltime_s=max(1, int(delta.total_seconds())) if delta else None,
            output_size_bytes=int(limits.output_size) if limits.output_size and limits.output_size > 0 else None,
            tool_timelimit_s=max(1, int(timelimit)) if timelimit and timelimit > 0 else None,
        )

    def _user(self, job_wrapper: Any, job: Any) -> str | None:
        """The user's email, or only their id where Galaxy keeps emails out of job names."""
        if not self.app.config.redact_email_in_job_name:
            return job_wrapper.user
        return f"user-{job.user_id}" if job.user_id is not None else None

    def _run_as(self, job_wrapper: Any, job: Any) -> str | None:
        """The Unix user the job runs as, if this runner runs jobs as their real user
        (`real_system_username` read as Galaxy reads it: the environment's, else galaxy.yml's)."""
        if not self.settings.run_as_real_user:
            return None
        setting = job_wrapper.get_destination_configuration("real_system_username",
                                                            self.app.config.real_system_username)
        user = job.user
        return real_system_user(setting, getattr(user, "email", None), getattr(user, "username", None),
                                self.settings.real_user_map)

    def _embed_metadata(self, job_wrapper: Any) -> bool:
        """Metadata in the job script (Galaxy's default), unless the destination says
        `embed_metadata_in_job: false` or the metadata strategy runs it in Celery."""
        if "celery" in (job_wrapper.metadata_strategy or ""):
            return False
        return asbool(job_wrapper.job_destination.params.get("embed_metadata_in_job", True))

    def _watch(self, task_id: str, job_wrapper: Any) -> None:
        with self._lock:
            self._wrappers[task_id] = job_wrapper
            watching = len(self._wrappers)
        self.stats.set("watching", watching)

    def _forget(self, task_id: str) -> None:
        self.lookouts.stop(task_id)
        with self._lock:
            self._wrappers.pop(task_id, None)
            self._applied.pop(task_id, None)
            watching = len(self._wrappers)
        self.stats.set("watching", watching)

    def _wrapper(self, task_id: str, job: Any) -> Any:
        with self._lock:
            wrapper = self._wrappers.get(task_id)
        if wrapper is None:
            # an event that came before Galaxy's start-up recovery handed us the job
            wrapper = self.app.job_manager.job_handler.job_queue.job_wrapper(job, use_persisted_destination=True)
            self._watch(task_id, wrapper)
        return wrapper


def _staged_files(job_wrapper: Any, ajs: AsynchronousJobState) -> dict[str, Any]:
    """What a destination without a shared filesystem stages of this job: Galaxy's job
    directory, the inputs' files, where the outputs go, the tool's files and Galaxy's files
    that name paths (docs/staging.md#galaxy-jobs)."""
    working = os.path.abspath(job_wrapper.working_directory)
    outputs: list[str] = []
    for path in job_wrapper.job_io.get_output_fnames():
        outputs += [path.real_path, path.false_extra_files_path]
    tool_script = os.path.join(working, "tool_script.sh")
    configs = [tool_script, os.path.join(working, "configs"), *job_wrapper.extra_filenames]
    tool = job_wrapper.tool
    tool_dir = os.path.abspath(str(tool.tool_dir)) if tool is not None and tool.tool_dir else None
    required = getattr(tool, "required_files", None)
    return dict(
        working_directory=working,
        input_files=tuple(os.path.abspath(path) for path in job_wrapper.job_io.get_input_fnames()),
        output_files=tuple(os.path.abspath(path) for path in outputs if path),
        tool_files=tuple(tool_files(tool_dir, required.find_required_files(tool_dir) if required and tool_dir else None,
                                    _texts([ajs.job_file, tool_script]))),
        config_files=tuple(os.path.abspath(path) for path in configs),
    )


def _texts(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        try:
            with open(path, errors="replace") as handle:
                found.append(handle.read(1 << 20))
        except OSError:
            pass
    return found


def _spec_file(job_wrapper: Any) -> str:
    return os.path.join(job_wrapper.working_directory, f"galaxy_{job_wrapper.get_id_tag()}.gt.json")


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)
