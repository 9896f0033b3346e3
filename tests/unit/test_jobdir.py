"""The job directory and job script, run for real with /bin/sh."""
from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from galaxy_tasks import jobdir
from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE, JobDir, job_environment

SECRET_URL = "postgresql://u:secret@h/db"


def make(tmp_path: Path, command: str, *, cores: int = 1, memory_mb: int | None = None,
         spec_env=None, destination_env=None, mesos_url: str = "", setup_file: str | None = None,
         name: str = "job1") -> tuple[JobDir, dict[str, str]]:
    root = tmp_path / "jobs" / name
    layout = JobDir(root)
    env = job_environment(
        layout, cores=cores, memory_mb=memory_mb, spec_env=spec_env or {},
        destination_env=destination_env or {}, mesos_url=mesos_url, job_id=name,
    )
    return jobdir.create(root, command, env, setup_file), env


def run(job_dir: JobDir, env: dict[str, str]) -> int:
    return subprocess.run(["/bin/sh", str(job_dir.script)], env=env, timeout=30,
                          stdin=subprocess.DEVNULL, capture_output=True).returncode


def dumped_env(job_dir: JobDir) -> dict[str, str]:
    raw = (job_dir.working / "env.dump").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if item)


DUMP = "env -0 > env.dump"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- layout ------------------------------------------------------------------------------


def test_create_makes_private_directories(tmp_path):
    job_dir, _ = make(tmp_path, "true")
    for path in (job_dir.root, job_dir.working, job_dir.tmp):
        assert path.is_dir()
        assert mode(path) == 0o700, path
    assert mode(job_dir.script) == 0o700
    assert mode(job_dir.command) == 0o600
    assert job_dir.command.read_text() == "true\n"
    assert not list(job_dir.root.glob("*.tmp"))


def test_create_tightens_an_existing_directory(tmp_path):
    root = tmp_path / "jobs" / "job1"
    root.mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    job_dir, _ = make(tmp_path, "true")
    assert mode(job_dir.root) == 0o700


def test_create_is_private_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        job_dir, _ = make(tmp_path, "true")
    finally:
        os.umask(old)
    for path in (job_dir.root, job_dir.working, job_dir.tmp):
        assert mode(path) == 0o700, path
    assert mode(job_dir.command) & 0o077 == 0


def test_nothing_recorded_before_the_job_runs(tmp_path):
    job_dir, _ = make(tmp_path, "true")
    assert job_dir.recorded_exit_code() is None
    assert job_dir.claimed_pid() is None
    assert job_dir.tail("stdout") == "" and job_dir.tail("stderr") == ""


# -- running the script ------------------------------------------------------------------


def test_exit_code_and_output_are_recorded(tmp_path):
    job_dir, env = make(tmp_path, "echo to-out; echo to-err >&2; exit 7")
    assert run(job_dir, env) == 7
    assert job_dir.recorded_exit_code() == 7
    assert job_dir.exit_code_file.read_text() == f"7 {job_dir.token}\n"
    assert job_dir.stdout.read_text() == "to-out\n"
    assert job_dir.stderr.read_text() == "to-err\n"
    assert job_dir.tail("stdout") == "to-out\n"
    assert job_dir.tail("stderr") == "to-err\n"


@pytest.mark.parametrize("command, code", [("true", 0), ("false", 1), ("exit 255", 255),
                                           ("no-such-command-xyz", 127), ("kill -9 $$", 137)])
def test_exit_codes(tmp_path, command, code):
    job_dir, env = make(tmp_path, command)
    run(job_dir, env)
    assert job_dir.recorded_exit_code() == code


def test_multiline_command_runs_in_the_working_directory(tmp_path):
    job_dir, env = make(tmp_path, "set -e\nprintf 'chr1\\t1\\n' > regions.bed\npwd > where\n")
    assert run(job_dir, env) == 0
    assert (job_dir.working / "regions.bed").read_text() == "chr1\t1\n"
    assert (job_dir.working / "where").read_text().strip() == str(job_dir.working)


def test_command_reads_dev_null(tmp_path):
    job_dir, env = make(tmp_path, "cat > got-stdin")
    assert run(job_dir, env) == 0
    assert (job_dir.working / "got-stdin").read_bytes() == b""


def test_files_the_job_writes_are_private(tmp_path):
    job_dir, env = make(tmp_path, "echo x > made")
    run(job_dir, env)
    assert mode(job_dir.working / "made") & 0o077 == 0
    assert mode(job_dir.stdout) & 0o077 == 0


def test_claim_records_the_script_pid(tmp_path):
    job_dir, env = make(tmp_path, "true")
    process = subprocess.Popen(["/bin/sh", str(job_dir.script)], env=env)
    assert process.wait(timeout=30) == 0
    assert job_dir.claimed_pid() == process.pid


# -- environment -------------------------------------------------------------------------


def test_tmpdir_is_inside_the_job_dir(tmp_path):
    job_dir, env = make(tmp_path, DUMP + "; mktemp > made-temp",
                        spec_env={"TMPDIR": "/tmp", "TMP": "/tmp"})
    assert run(job_dir, env) == 0
    seen = dumped_env(job_dir)
    for name in ("TMPDIR", "TEMP", "TMP"):
        assert seen[name] == str(job_dir.tmp)
    made = Path((job_dir.working / "made-temp").read_text().strip())
    assert made.parent == job_dir.tmp and made.exists()
    assert seen["HOME"] == str(job_dir.working)


def test_a_destination_may_keep_scratch_on_the_node(tmp_path):
    local = tmp_path / "node-local"
    local.mkdir()
    job_dir, env = make(tmp_path, DUMP + "; mktemp > made-temp", destination_env={"TMPDIR": str(local)},
                        spec_env={"TMPDIR": "/tmp"})
    assert run(job_dir, env) == 0
    seen = dumped_env(job_dir)
    assert seen["TMPDIR"] == seen["TEMP"] == seen["TMP"] == str(local)
    assert Path((job_dir.working / "made-temp").read_text().strip()).parent == local


def test_slots_and_memory(tmp_path):
    job_dir, env = make(tmp_path, DUMP, cores=4, memory_mb=2048)
    run(job_dir, env)
    seen = dumped_env(job_dir)
    assert seen["GALAXY_SLOTS"] == "4"
    assert seen["GALAXY_MEMORY_MB"] == "2048"
    assert seen["GALAXY_TASKS_JOB_ID"] == "job1"


def test_no_memory_means_no_memory_variable(tmp_path):
    job_dir, env = make(tmp_path, DUMP)
    run(job_dir, env)
    seen = dumped_env(job_dir)
    assert seen["GALAXY_SLOTS"] == "1"
    assert "GALAXY_MEMORY_MB" not in seen


@pytest.mark.parametrize("url, expected", [("", ""), ("zk://zk1:2181,zk2:2181/mesos", "zk://zk1:2181,zk2:2181/mesos")])
def test_mesos_url_is_always_set(tmp_path, url, expected):
    job_dir, env = make(tmp_path, DUMP, mesos_url=url)
    run(job_dir, env)
    seen = dumped_env(job_dir)
    assert "MESOS_URL" in seen
    assert seen["MESOS_URL"] == expected


WEIRD = {
    "QUOTES": "it's \"quoted\" ''",
    "SPACES": "  leading and trailing  ",
    "DOLLARS": "$HOME ${PATH} $(id) `id` $$ \\$",
    "NEWLINES": "line1\nline2\n",
    "GLOB": "* ? [a-z] ~",
    "SEMI": "x; rm -rf / #",
    "EMPTY": "",
    "UNICODE": "é ü 😀",
    "BACKSLASH": "a\\nb\\\\",
}


def test_spec_environment_values_survive_exactly(tmp_path):
    job_dir, env = make(tmp_path, DUMP + '\nprintf %s "$QUOTES" > quotes', spec_env=WEIRD)
    # the script is run with an empty environment: it must export everything itself, as a
    # DRM or a Mesos agent would run it
    assert run(job_dir, {}) == 0
    seen = dumped_env(job_dir)
    for name, value in WEIRD.items():
        assert seen[name] == value, name
    assert (job_dir.working / "quotes").read_text() == WEIRD["QUOTES"]


def test_destination_env_is_set_and_spec_env_wins(tmp_path):
    job_dir, env = make(tmp_path, DUMP, destination_env={"SGE_CELL": "default", "SHARED": "dest"},
                        spec_env={"SHARED": "spec"})
    run(job_dir, {})
    seen = dumped_env(job_dir)
    assert seen["SGE_CELL"] == "default"
    assert seen["SHARED"] == "spec"


def test_worker_environment_does_not_leak(tmp_path, monkeypatch):
    monkeypatch.setenv("GALAXY_TASKS_DATABASE_URL", SECRET_URL)
    monkeypatch.setenv("GALAXY_TASKS_BROKER_URL", "redis://:brokerpw@redis:6379/0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "awssecret")
    job_dir, env = make(tmp_path, DUMP)
    assert "GALAXY_TASKS_DATABASE_URL" not in env
    assert run(job_dir, env) == 0
    seen = dumped_env(job_dir)
    assert not any(name.startswith("GALAXY_TASKS_") and name != "GALAXY_TASKS_JOB_ID" for name in seen)
    assert "AWS_SECRET_ACCESS_KEY" not in seen
    dump = (job_dir.working / "env.dump").read_text()
    for secret in ("secret", "brokerpw", "awssecret"):
        assert secret not in dump
        assert secret not in job_dir.script.read_text()


def test_environment_setup_file_is_sourced(tmp_path):
    setup = tmp_path / "conf dir" / "env setup.sh"
    setup.parent.mkdir()
    setup.write_text("SETUP_VAR='from setup'; export SETUP_VAR\nPATH=/opt/tool/bin:$PATH; export PATH\n")
    job_dir, env = make(tmp_path, DUMP, setup_file=str(setup), spec_env={"SPEC_VAR": "x"})
    assert run(job_dir, env) == 0
    seen = dumped_env(job_dir)
    assert seen["SETUP_VAR"] == "from setup"
    assert seen["PATH"].startswith("/opt/tool/bin:")
    assert seen["SPEC_VAR"] == "x"


# -- runs once ---------------------------------------------------------------------------


def test_second_run_exits_without_running_the_command(tmp_path):
    ledger = tmp_path / "ledger"
    job_dir, env = make(tmp_path, f"echo ran >> {ledger}; exit 3")
    assert run(job_dir, env) == 3
    assert run(job_dir, env) == CLAIMED_EXIT_CODE == 75
    assert ledger.read_text() == "ran\n"
    assert job_dir.recorded_exit_code() == 3


def test_concurrent_copies_run_the_command_once(tmp_path):
    ledger = tmp_path / "ledger"
    job_dir, env = make(tmp_path, f"echo ran >> {ledger}; sleep 0.3")
    copies = [subprocess.Popen(["/bin/sh", str(job_dir.script)], env=env) for _ in range(6)]
    codes = sorted(p.wait(timeout=30) for p in copies)
    assert codes == [0] + [CLAIMED_EXIT_CODE] * 5
    assert ledger.read_text() == "ran\n"
    assert job_dir.recorded_exit_code() == 0
    winner = [p.pid for p in copies if p.returncode == 0]
    assert job_dir.claimed_pid() == winner[0]


def test_exit_code_file_appears_only_when_complete(tmp_path):
    job_dir, env = make(tmp_path, "sleep 0.5; exit 4")
    process = subprocess.Popen(["/bin/sh", str(job_dir.script)], env=env)
    deadline = time.monotonic() + 10
    while job_dir.claimed_pid() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job_dir.recorded_exit_code() is None
    assert process.wait(timeout=30) == 4
    assert job_dir.recorded_exit_code() == 4


# -- tail --------------------------------------------------------------------------------


def test_tail_is_bounded(tmp_path):
    job_dir, env = make(tmp_path, "i=0; while [ $i -lt 5000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
                                  "i=$((i+1)); done; echo THE-END")
    assert run(job_dir, env) == 0
    size = job_dir.stdout.stat().st_size
    assert size > jobdir.OUTPUT_TAIL_BYTES
    tail = job_dir.tail("stdout")
    assert len(tail.encode()) == jobdir.OUTPUT_TAIL_BYTES
    assert tail.endswith("line-4999-" + "x" * 34 + "\nTHE-END\n")
    small = job_dir.tail("stdout", limit=100)
    assert len(small.encode()) == 100 and small.endswith("THE-END\n")


def test_tail_of_cut_multibyte_text_does_not_fail(tmp_path):
    job_dir, _ = make(tmp_path, "true")
    job_dir.stderr.write_bytes("ü".encode() * 100)
    tail = job_dir.tail("stderr", limit=5)  # starts in the middle of a character
    assert tail.endswith("üü") and len(tail) <= 5


def test_unreadable_exit_code_is_none(tmp_path):
    job_dir, _ = make(tmp_path, "true")
    job_dir.exit_code_file.write_text("")
    assert job_dir.recorded_exit_code() is None


# -- what a hostile command leaves in its directory --------------------------------------


def test_output_tails_never_follow_links_and_never_block(tmp_path):
    job_dir, env = make(tmp_path, "true")
    assert run(job_dir, env) == 0
    secret = tmp_path / "secret.txt"
    secret.write_text("the steps host's secret\n")
    job_dir.stdout.unlink()
    job_dir.stdout.symlink_to(secret)
    assert job_dir.tail("stdout") == "", "a link is not followed"
    job_dir.stdout.unlink()
    job_dir.stdout.symlink_to("/dev/zero")
    assert job_dir.tail("stdout") == "", "nor is a device read"
    job_dir.stderr.unlink()
    os.mkfifo(job_dir.stderr)
    started = time.monotonic()
    assert job_dir.tail("stderr") == "" and time.monotonic() - started < 1, "a FIFO is not waited on"


def test_output_with_nul_bytes_and_bad_utf8_becomes_storable_text(tmp_path):
    job_dir, env = make(tmp_path, r"printf 'a\000b\377c'")
    assert run(job_dir, env) == 0
    text = job_dir.tail("stdout")
    assert "\x00" not in text and text.startswith("a") and text.endswith("c")


def test_a_big_output_is_read_only_up_to_its_tail(tmp_path):
    job_dir, env = make(tmp_path, "head -c 5000000 /dev/zero | tr '\\0' x; echo end")
    assert run(job_dir, env) == 0
    tail = job_dir.tail("stdout")
    assert len(tail) == jobdir.OUTPUT_TAIL_BYTES and tail.endswith("xend\n")


def test_an_exit_code_file_replaced_by_a_link_or_fifo_is_no_exit_code(tmp_path):
    job_dir, env = make(tmp_path, "true")
    assert run(job_dir, env) == 0
    real = job_dir.exit_code_file.read_text()
    job_dir.exit_code_file.unlink()
    (tmp_path / "elsewhere").write_text(real)
    job_dir.exit_code_file.symlink_to(tmp_path / "elsewhere")
    assert job_dir.recorded_exit_code() is None
    job_dir.exit_code_file.unlink()
    os.mkfifo(job_dir.exit_code_file)
    assert job_dir.recorded_exit_code() is None


@pytest.mark.parametrize("hostile", [{"IFS": "0"}, {"PATH": "/nonexistent"}, {"IFS": "0", "PATH": "/x"}])
def test_the_jobs_environment_cannot_stop_its_exit_code_being_recorded(tmp_path, hostile):
    job_dir, env = make(tmp_path, "exit 10", spec_env=hostile)
    assert run(job_dir, env) == 10
    assert job_dir.recorded_exit_code() == 10


def test_the_command_still_sees_the_environment_it_asked_for(tmp_path):
    """(`/bin/sh` itself never takes IFS from its environment: a shell command cannot see it.)"""
    job_dir, env = make(tmp_path, DUMP, spec_env={"TOOL_OPTS": "a b", "PATH": "/usr/bin:/bin:/opt/tool"})
    assert run(job_dir, env) == 0
    dumped = dumped_env(job_dir)
    assert dumped["TOOL_OPTS"] == "a b" and dumped["PATH"] == "/usr/bin:/bin:/opt/tool"


def test_a_missing_environment_setup_file_says_why(tmp_path):
    job_dir, env = make(tmp_path, "echo ran > ran.txt", setup_file=str(tmp_path / "missing.sh"))
    assert run(job_dir, env) == jobdir.SETUP_FAILED_EXIT_CODE
    assert not (job_dir.working / "ran.txt").exists()
    assert job_dir.script_reason() == f"environment_setup_file {tmp_path / 'missing.sh'} cannot be read"


def test_a_directory_of_another_job_is_set_aside_not_taken(tmp_path):
    """A directory left at this job's path by an earlier job with the same id (a restored
    database, a second deployment): its claim and exit code are not this job's."""
    old, env = make(tmp_path, "exit 0")
    assert run(old, env) == 0 and old.recorded_exit_code() == 0
    new = jobdir.create(old.root, "exit 3", env, None, token=jobdir.new_token())
    assert new.recorded_exit_code() is None and new.claimed_pid() is None
    assert [p.name for p in old.root.parent.iterdir() if ".stale-" in p.name], "the old one is kept aside"
    assert run(new, env) == 3 and new.recorded_exit_code() == 3


def test_preparing_the_same_row_again_keeps_its_directory(tmp_path):
    first, env = make(tmp_path, "exit 0")
    again = jobdir.create(first.root, "exit 0", env, None, token=first.token)
    assert again.root == first.root and not [p for p in first.root.parent.iterdir() if ".stale-" in p.name]


def test_a_forged_end_note_of_another_token_is_ignored(tmp_path):
    job_dir, _ = make(tmp_path, "true")
    job_dir.end_note_file.write_text('{"token": "not-this-one", "exit_code": 0}')
    assert job_dir.end_note() is None
    job_dir.write_end_note(jobdir.EndNote(exit_code=None, signal=9, reason="killed by signal SIGKILL"))
    note = JobDir(job_dir.root, job_dir.token).end_note()
    assert note.signal == 9 and note.reason == "killed by signal SIGKILL"


def test_two_prepares_of_one_job_may_write_its_directory_at_once(tmp_path):
    """A redelivered prepare and the start-up recovery's run side by side: both succeed, and
    the directory holds one whole copy."""
    import threading

    root = tmp_path / "job"
    env = job_environment(JobDir(root), cores=1, memory_mb=None, spec_env={}, destination_env={}, mesos_url="",
                          job_id="job")
    errors: list[BaseException] = []

    def prepare() -> None:
        for _ in range(300):
            try:
                jobdir.create(root, "echo hi", env, None, token="the-rows-token")
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)
                return

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert JobDir(root).command.read_text() == "echo hi\n"
    assert not list(root.glob(".*.tmp")), "no temporary file left behind"
    assert not list(tmp_path.glob(".job.*")) and not list(tmp_path.glob("job.stale-*")), \
        "no staging directory left behind, and nothing set aside: both were this job's"
