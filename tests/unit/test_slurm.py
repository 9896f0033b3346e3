"""The Slurm runner's parts that need no Slurm: its params as the job_conf loads them, the
sbatch options of a job, what squeue and the jobcomp record say, and how an end becomes a
Completion (tests/slurm runs the runner against the real Slurm)."""
from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import pytest

from galaxy_tasks import child_workers, cli, config, jobdir, routing
from galaxy_tasks.context import Context
from galaxy_tasks.errors import ConfigError, RunnerError
from galaxy_tasks.runners import params, runner_class
from galaxy_tasks.runners.base import Launch, Tracked
from galaxy_tasks.runners.slurm import SlurmParams, SlurmRunner, sbatch_options
from galaxy_tasks.runners.slurm.ends import CANCEL_MARKER, KILL_SETTLES_S, STOOD_DOWN, completion, without_record
from galaxy_tasks.runners.slurm.records import SlurmJob, parse_jobcomp_line, parse_squeue
from galaxy_tasks.runners.slurm.script import STOOD_DOWN_PREFIX
from galaxy_tasks.runners.slurm.state import ListenerState
from galaxy_tasks.store import Store


def make_launch(root: Path, command: str = "true", **fields) -> Launch:
    job_id = fields.pop("job_id", "j1")
    env = jobdir.job_environment(jobdir.JobDir(root / job_id), cores=fields.get("cores", 1),
                                 memory_mb=fields.get("memory_mb"), spec_env={}, destination_env={}, mesos_url="",
                                 job_id=job_id)
    created = jobdir.create(root / job_id, command, env, None)
    return Launch(job_id=job_id, job_dir=root / job_id, script=created.script, **fields)


# -- registered, with a holder and typed params ---------------------------------------------

def test_slurm_is_registered_with_its_holding_worker():
    assert runner_class("slurm") is SlurmRunner
    assert SlurmRunner.holder == "workers.slurm" and SlurmRunner.Params is SlurmParams
    assert child_workers.command("slurm", ["slurm"], "slurm@%h", None)[1:7] == ["-m", "celery", "-A", "workers.slurm",
                                                                          "worker", "-Q"]


def test_a_plain_worker_leaves_the_slurm_queues_to_the_slurm_worker(tmp_path):
    conf = tmp_path / "job_conf.yml"
    conf.write_text(textwrap.dedent("""\
        destinations:
          local: {runner: local}
          slurm: {runner: slurm}
          big: {runner: slurm, params: {partition: big}}
        default: local
        """))
    settings = config.load({"GALAXY_TASKS_HOME": str(tmp_path), "GALAXY_TASKS_JOB_CONF": str(conf)})
    ctx = Context(settings, Store(settings.database_url), routing.load(settings.job_conf))
    assert cli._queues_by_worker(ctx) == (["galaxy_tasks", "galaxy_tasks.ends", "local"], {"slurm": ["slurm", "slurm.big"]})


def test_params_from_a_job_conf_are_typed_and_the_top_level_native_specification_counts():
    conf = routing.parse({"destinations": {"s": {"runner": "slurm", "native_specification": "--nice=5",
                                                 "params": {"partition": "debug", "command_timeout_s": 5,
                                                            "listen_port": 7001}}}})
    p = conf.destinations["s"].params
    assert isinstance(p, SlurmParams)
    assert (p.partition, p.native_specification, p.command_timeout_s, p.listen_port) == ("debug", "--nice=5", 5.0,
                                                                                        7001)
    assert (p.command_retries, p.confirm_timeout_s, p.state_file, p.sbatch) == (2, 180.0, None, "sbatch")


@pytest.mark.parametrize("key, value, message", [
    ("partition", "debug; rm -rf /", "must be a Slurm name (letters, digits, _.,:+-), not 'debug; rm -rf /'"),
    ("qos", "a b", "must be a Slurm name"),
    ("native_specification", "-J other", "may not set --job-name"),
    ("native_specification", "--array=1-5", "may not set --array"),
    ("native_specification", "--wrap='rm -rf /'", "may not set --wrap"),
    ("native_specification", "--export=ALL", "may not set --export"),
    ("native_specification", "-D /tmp", "may not set --chdir"),
    ("native_specification", "--comment='unbalanced", "cannot be split into sbatch options"),
    ("announce_host", "host; rm", "must be a host name or an IPv4 address"),
    ("listen_port", 65536, "must be a port number (at most 65535)"),
    ("listen_port", -1, "must be at least 0"),
    ("command_timeout_s", 0, "must be at least 0.1"),
    ("command_retries", 1.5, "must be a whole number"),
    ("jobcomp_scan_lines", 0, "must be at least 1"),
    ("command_env", {"A": "b"}, "unknown param of this runner"),
])
def test_a_bad_param_names_its_file_line_and_key(tmp_path, key, value, message):
    path = tmp_path / "job_conf.yml"
    path.write_text(f"destinations:\n  s:\n    runner: slurm\n    params:\n      {key}: {value!r}\n")
    with pytest.raises(ConfigError) as info:
        routing.load(path)
    assert str(info.value).startswith(f"{path}:5: destinations.s.params.{key}: ")
    assert message in str(info.value)


def test_every_param_has_a_doc():
    assert all(doc for _, _, _, doc in params.describe(SlurmParams))


# -- what is submitted ----------------------------------------------------------------------

def test_sbatch_options_map_resources_then_the_destination_params(tmp_path):
    launch = make_launch(tmp_path, cores=4, memory_mb=1000, walltime_s=3725)
    p = params.load(SlurmParams, {"partition": "debug", "account": "lab", "qos": "high",
                                  "native_specification": "--comment='two words' --nice=5"})
    options = sbatch_options(launch, p)
    assert options[:7] == [f"--job-name=gt-{launch.job_id}", f"--chdir={launch.job_dir}",
                           f"--output={launch.job_dir}/slurm.out", f"--error={launch.job_dir}/slurm.err",
                           "--no-requeue", "--ntasks=1", "--cpus-per-task=4"]
    assert options[7:] == ["--mem=1000M", "--time=63", "--partition=debug", "--account=lab", "--qos=high",
                           "--comment=two words", "--nice=5"]
    assert sbatch_options(make_launch(tmp_path, job_id="j2"), SlurmParams())[7:] == []


@pytest.mark.parametrize("fields, message", [
    ({"cores": 0}, "cores must be a positive integer, not 0"),
    ({"walltime_s": -5}, "walltime_s must be a positive integer"),
    ({"memory_mb": True}, "memory_mb must be a positive integer"),
])
def test_a_job_with_bad_resources_is_refused(tmp_path, fields, message):
    with pytest.raises(RunnerError, match=message):
        sbatch_options(make_launch(tmp_path, **fields), SlurmParams())


# -- what Slurm says ---------------------------------------------------------------------------

def test_squeue_rows_are_parsed():
    out = ("12|COMPLETED|0|None|2026-01-01T10:00:00|2026-01-01T10:00:05|1:00|gt-a|\n"
           "13|FAILED|768|NonZeroExitCode|2026-01-01T10:00:00|2026-01-01T10:00:01|UNLIMITED|gt-b|c|\n"
           "14|CANCELLED by 0|15|None|N/A|N/A|1:00|gt-c|\n"
           "not a row\n")
    jobs = parse_squeue(out)
    assert sorted(jobs) == ["12", "13", "14"]
    assert (jobs["12"].state, jobs["12"].exit_code, jobs["12"].signal, jobs["12"].name) == ("COMPLETED", 0, None, "gt-a")
    assert jobs["12"].end_time - jobs["12"].start_time == 5
    assert (jobs["13"].exit_code, jobs["13"].name) == (3, "gt-b|c")  # a name may hold the separator
    assert (jobs["14"].state, jobs["14"].signal, jobs["14"].start_time) == ("CANCELLED", signal.SIGTERM, None)


def test_jobcomp_lines_are_parsed():
    line = ("JobId=40 UserId=root(0) GroupId=root(0) Name=gt-x y JobState=OUT_OF_MEMORY Partition=debug "
            "TimeLimit=1 StartTime=2026-01-01T10:00:00 EndTime=2026-01-01T10:00:03 NodeList=localhost "
            "ExitCode=0:125")
    job = parse_jobcomp_line(line)
    assert job is not None
    assert (job.external_id, job.name, job.state, job.exit_code, job.signal) == ("40", "gt-x y", "OUT_OF_MEMORY",
                                                                                 None, None)
    assert parse_jobcomp_line("JobId=x JobState=FAILED") is None


# -- an end as a Completion, with Galaxy's runner_state ----------------------------------------

def ended(state: str, exit_code: int | None = 0, sig: int | None = None, reason: str = "None",
          external_id: str = "7") -> SlurmJob:
    return SlurmJob(external_id, "gt-j1", state, exit_code, sig, reason, 100.0, 160.0, "1:00", "squeue")


def end_of(tmp_path: Path, info: SlurmJob, *, recorded: int | None = None):
    job_dir = tmp_path / "j1"
    job_dir.mkdir(exist_ok=True)
    if recorded is not None:
        (job_dir / "exit_code").write_text(f"{recorded}\n")
    return completion(Tracked("j1", info.external_id, job_dir), info, "runner")


@pytest.mark.parametrize("info, runner_state, sig, words", [
    (ended("TIMEOUT", None, signal.SIGTERM), "walltime_reached", signal.SIGTERM, "walltime limit (1:00)"),
    (ended("OUT_OF_MEMORY", 0, None), "memory_limit_reached", signal.SIGKILL, "memory limit"),
    (ended("NODE_FAIL", None), "unknown_error", None, "NODE_FAIL"),
    (ended("PREEMPTED", None), "unknown_error", None, "preempted"),
    (ended("BOOT_FAIL", None), "unknown_error", None, "failed to boot"),
    (ended("FAILED", 0, None, "launch failed requeued held"), "unknown_error", None, "Slurm could not run the job"),
    (ended("DEADLINE", None), None, None, "deadline"),
    (ended("CANCELLED", None), None, None, "cancelled outside galaxy-tasks"),
    (ended("FAILED", None, signal.SIGSEGV), None, signal.SIGSEGV, "killed by signal SIGSEGV"),
])
def test_how_a_job_ended_without_an_exit_code_of_its_own(tmp_path, info, runner_state, sig, words):
    done = end_of(tmp_path, info)
    assert (done.runner_state, done.signal, done.exit_code) == (runner_state, sig, None)
    assert words in done.reason
    assert (done.wall_time_s, done.ended_at, done.external_id) == (60.0, 160.0, "7")


def test_a_fresh_sigkill_waits_for_slurmstepd_to_say_whether_it_was_for_memory(tmp_path):
    """Slurm's memory polling reports FAILED with SIGKILL, and slurmstepd writes why a moment
    later: until then, or until the kill is a few seconds old, the end is not decided."""
    just_now = time.time()
    fresh = ended("FAILED", None, signal.SIGKILL)._replace(end_time=just_now)
    assert end_of(tmp_path, fresh) is None
    (tmp_path / "j1" / "slurm.err").write_text("slurmstepd: error: Exceeded job memory limit\n")
    assert end_of(tmp_path, fresh).runner_state == "memory_limit_reached"
    (tmp_path / "j1" / "slurm.err").unlink()
    old = fresh._replace(end_time=just_now - KILL_SETTLES_S - 1)
    done = end_of(tmp_path, old)
    assert (done.signal, done.runner_state, done.reason) == (signal.SIGKILL, None, "killed by signal SIGKILL")


def test_a_command_that_finished_before_the_node_failed_keeps_its_exit_code(tmp_path):
    done = end_of(tmp_path, ended("NODE_FAIL", None), recorded=0)
    assert (done.exit_code, done.runner_state) == (0, None) and "NODE_FAIL" in done.reason


def test_plain_exits_have_no_reason_and_the_recorded_exit_code_wins(tmp_path):
    assert end_of(tmp_path, ended("COMPLETED", 0)).reason is None
    done = end_of(tmp_path, ended("FAILED", 3, reason="NonZeroExitCode"), recorded=4)
    assert (done.exit_code, done.signal, done.reason, done.runner_state) == (4, None, None, None)


def test_our_own_cancel_is_told_apart(tmp_path):
    (tmp_path / "j1").mkdir()
    (tmp_path / "j1" / CANCEL_MARKER).write_text("cancel\n")
    done = end_of(tmp_path, ended("CANCELLED", None))
    assert (done.reason, done.runner_state) == ("the job was cancelled (scancel by galaxy-tasks)", None)


def test_a_copy_that_stood_down_is_not_the_jobs_end(tmp_path):
    (tmp_path / "j1").mkdir()
    (tmp_path / "j1" / f"{STOOD_DOWN_PREFIX}7").touch()
    assert end_of(tmp_path, ended("FAILED", 75)) is STOOD_DOWN
    assert end_of(tmp_path, ended("FAILED", 75, external_id="8")) is not STOOD_DOWN  # the command's own 75


def test_a_job_slurm_has_no_record_of(tmp_path):
    (tmp_path / "j1").mkdir()
    lost = without_record(Tracked("j1", "9", tmp_path / "j1"))
    assert (lost.exit_code, lost.runner_state, lost.source) == (None, "unknown_error", "reconcile")
    (tmp_path / "j1" / "exit_code").write_text("0\n")
    assert without_record(Tracked("j1", "9", tmp_path / "j1")).exit_code == 0


# -- the listener's state file ----------------------------------------------------------------

def test_the_state_file_keeps_port_and_secret_and_is_held_by_one_listener(tmp_path):
    path = str(tmp_path / "state" / "w1.listener")
    first = ListenerState(path)
    assert (first.port, first.secret) == (None, None)
    first.save(7001, b"\x01" * 32)
    with pytest.raises(RunnerError, match="is held by another live process"):
        ListenerState(path)
    first.release()
    again = ListenerState(path)
    assert (again.port, again.secret) == (7001, b"\x01" * 32)
    assert (tmp_path / "state" / "w1.listener").stat().st_mode & 0o777 == 0o600
    again.release()
    (tmp_path / "state" / "w1.listener").write_text('{"port": "x", "secret": "not hex"}')
    unreadable = ListenerState(path)
    assert (unreadable.port, unreadable.secret) == (None, None)
    unreadable.release()


def test_a_memory_kill_the_batch_script_outlived_is_still_for_memory(tmp_path):
    """Slurm's memory polling SIGKILLs job.sh; the batch script may record its 137 before it
    is killed in turn, and Slurm then says FAILED with exit code 137 and no signal."""
    (tmp_path / "j1").mkdir()
    (tmp_path / "j1" / "slurm.err").write_text("slurmstepd: error: Exceeded job memory limit\n")
    done = end_of(tmp_path, ended("FAILED", 137, None), recorded=137)
    assert (done.runner_state, done.signal, done.exit_code) == ("memory_limit_reached", signal.SIGKILL, 137)
    assert "memory polling" in done.reason
