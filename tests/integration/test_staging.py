"""Destinations without a shared filesystem (docs/staging.md), for real: an sshd of the
test's own on 127.0.0.1, rsync over it, and a worker started in a mount namespace of its own
where the jobs root and the inputs' directory are empty tmpfs, so it truly cannot see the
submitter's files; everything it runs came over ssh, and everything the submitter sees of a
job came back the same way."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from galaxy_tasks.states import TERMINAL, JobState
from tests.support.sshd import Sshd, own_sshd

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("staging")]

PORT = 2299
BIG_MB = 100


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    yield from own_sshd(tmp_path_factory.mktemp("sshd"), PORT)


class Site:
    """A submitter (its steps worker sees the jobs root and the inputs) and a staging worker
    that sees neither."""

    def __init__(self, tmp: Path, make_deployment, sshd: Sshd, **env: str) -> None:
        self.tmp, self.sshd = tmp, sshd
        self.inputs = tmp / "inputs"
        self.inputs.mkdir()
        self.jobs = tmp / "jobs"
        self.jobs.mkdir()
        tamper = tmp / "rsync-tamper"
        # a transfer that changes what it carried: after rsync received files here, one byte
        # more at the end of each (what a faulty link or a meddler would leave)
        tamper.write_text('#!/bin/sh\n/usr/bin/rsync "$@" || exit $?\nfor last; do :; done\n'
                          'case "$last" in *:*) ;; *) find "$last" -type f -exec sh -c \'printf X >> "$1"\' sh {} \\; ;;'
                          ' esac\n')
        tamper.chmod(0o755)
        # the same on the way home: one byte more in each output that reaches the submitter's
        # .stage-out/, each time it is sent (the worker's namespace hides the jobs root: the
        # submitter's side is reached as this test's process sees it)
        tamper_out = tmp / "rsync-tamper-out"
        tamper_out.write_text('#!/bin/sh\n/usr/bin/rsync "$@" || exit $?\nfor last; do :; done\n'
                              f'case "$last" in *:*/.stage-out/) d="/proc/{os.getpid()}/root${{last#*:}}working"; '
                              '[ -d "$d" ] && '
                              'find "$d" -type f -exec sh -c \'printf X >> "$1"\' sh {} \\; ;; esac\nexit 0\n')
        tamper_out.chmod(0o755)
        conf = tmp / "job_conf.yml"
        conf.write_text("destinations:\n" + "".join(
            f"  {name}:\n    runner: local\n    queue: {name}\n    shared_filesystem: false\n"
            f"    staging:\n      host: 127.0.0.1\n      port: {PORT}\n      identity_file: {sshd.identity}\n"
            f"      known_hosts: {sshd.known_hosts}\n      root: {tmp / 'staged' / name}\n"
            f"      max_bytes: {2 << 30}\n{extra}"
            for name, extra in (("staged", ""), ("tampered", f"      rsync: {tamper}\n"),
                                ("tampered_out", f"      rsync: {tamper_out}\n")))
            + "  plain:\n    runner: local\n    queue: plain\ndefault: staged\n")
        self.deployment = make_deployment(GALAXY_TASKS_JOB_CONF=str(conf), GALAXY_TASKS_CRASH_DIR=str(tmp), **env)
        # the submitter's own worker also serves `plain`, a destination that shares its files
        self.deployment.worker("galaxy_tasks,galaxy_tasks.ends,plain", "steps@%h")

    def staging_worker(self, name: str, **env: str):
        hide = 'mount -t tmpfs hidden "$1" && mount -t tmpfs hidden "$2" && shift 2 && exec "$@"'
        return self.deployment.worker("staged,tampered,tampered_out", name, env=env, prefix=[
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", hide, "sh",
            str(self.jobs), str(self.inputs)])

    def input(self, name: str, data: bytes) -> str:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def big_input(self, name: str) -> tuple[str, str]:
        path, digest = self.inputs / name, hashlib.sha256()
        with open(path, "wb") as out:
            for _ in range(BIG_MB):
                chunk = os.urandom(1 << 20)
                digest.update(chunk)
                out.write(chunk)
        return str(path), digest.hexdigest()

    def submit(self, command: str, inputs: list[str], outputs: list[str], destination: str = "staged") -> str:
        return self.deployment.submit_many([{"tool_id": "staged_tool", "command": command, "inputs": inputs,
                                             "outputs": outputs, "destination": destination}])[0]

    def working(self, job_id: str) -> Path:
        return self.jobs / job_id / "working"


@pytest.fixture
def site(tmp_path: Path, make_deployment, sshd: Sshd) -> Site:
    return Site(tmp_path, make_deployment, sshd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _q(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


def test_staging_inputs_in_outputs_home(site: Site):
    """Several inputs (one of 100 MB, one in a directory with a space) in, several outputs
    back: the job ends ok and the submitter's job directory holds the right content."""
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"first\n")
    b = site.input("sub dir/b.txt", b"second\n")
    big, big_sha = site.big_input("big.bin")
    command = (f"cat {_q(a)} {_q(b)} > joined.txt && cp {_q(big)} big.out && sha256sum < {_q(big)} > big.sha && "
               f"ls -A {_q(str(site.inputs))} > seen.txt && echo ran")
    job_id = site.submit(command, [a, b, big], ["joined.txt", "big.out", "big.sha", "seen.txt"])
    job = site.deployment.wait_terminal([job_id], timeout=240)[0]
    assert job.state == JobState.OK.value, (job.reason, site.deployment.logs()[-3000:])
    working = site.working(job_id)
    assert (working / "joined.txt").read_bytes() == b"first\nsecond\n"
    assert _sha256(working / "big.out") == big_sha
    assert (working / "big.sha").read_text().split()[0] == big_sha
    # the job ran where the inputs' directory is empty: it read only the staged copies
    assert (working / "seen.txt").read_text() == ""
    assert job.stdout_tail == "ran\n"
    assert (site.jobs / job_id / "exit_code").read_text().split()[0] == "0"
    assert not (site.jobs / job_id / ".stage-out").exists()
    assert site.deployment.history(job_id).count(JobState.OK) == 1
    _figures(site, job_id, big)


def test_staging_directory_in_files_home_at_their_own_paths_and_rewritten_copies(site: Site):
    """A directory input (a file in it, an empty directory), a return at the submitter's own
    path and the directory itself returned, a script declared for rewriting: the job runs the
    rewritten copy against the staged copies; what it made comes home where the submitter
    named it, what it left as it came and the rewritten script do not."""
    site.staging_worker("stager@%h")
    tree = site.inputs / "tree"
    data = site.input("tree/data/x.txt", b"in a directory\n")
    (tree / "empty").mkdir()
    result = site.inputs / "results" / "out.txt"
    script = site.input("tree/run.sh", (
        f"cat {_q(data)} > {_q(str(result))}\n[ -d {_q(str(tree / 'empty'))} ] && echo there > {_q(str(tree / 'made.txt'))}\n"
        f"echo {_q(str(tree))} > {_q(str(tree / 'where.txt'))}\n").encode())
    before = (Path(data).stat().st_ino, Path(script).read_bytes())
    job_id = site.deployment.submit_many([{
        "tool_id": "staged_tool", "command": f"sh {_q(script)}", "inputs": [str(tree)],
        "returns": [str(tree), str(result)], "rewrite": [script], "destination": "staged"}])[0]
    job = site.deployment.wait_terminal([job_id], timeout=120)[0]
    assert job.state == JobState.OK.value, (job.reason, site.deployment.logs()[-3000:])
    assert result.read_bytes() == b"in a directory\n"
    assert (tree / "made.txt").read_text() == "there\n"
    # it ran where the submitter's directory is not: the script named the worker's copy
    assert (tree / "where.txt").read_text().strip() not in ("", str(tree))
    assert (Path(data).stat().st_ino, Path(script).read_bytes()) == before  # neither sent home
    assert not (site.jobs / job_id / ".stage-out").exists()


def test_staging_missing_output_ends_error_naming_it(site: Site):
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"in\n")
    job_id = site.submit(f"cp {_q(a)} made.txt", [a], ["made.txt", "never.txt"])
    job = site.deployment.wait_terminal([job_id], timeout=120)[0]
    assert job.state == JobState.ERROR.value
    assert job.reason == "declared output not produced: never.txt"
    assert (site.working(job_id) / "made.txt").read_bytes() == b"in\n"


def test_staging_tampered_transfer_is_caught(site: Site):
    """An input that arrives other than it left (one byte more) is never run on: the job
    ends error naming it."""
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"genuine\n")
    job_id = site.submit(f"cat {_q(a)} > out.txt", [a], ["out.txt"], destination="tampered")
    job = site.deployment.wait_terminal([job_id], timeout=120)[0]
    assert job.state == JobState.ERROR.value
    assert "input arrived other than it left" in (job.reason or "") and a in (job.reason or "")
    assert not (site.working(job_id) / "out.txt").exists()


def test_staging_output_tampered_on_its_way_home_is_never_taken_for_it(site: Site):
    """An output that reaches the submitter other than it left (one byte more, every time it
    is sent) never moves into place: after the resends the job ends error naming it, and the
    end itself still comes home."""
    site.staging_worker("stager@%h")
    job_id = site.submit("echo made > out.txt && echo done", [], ["out.txt"], destination="tampered_out")
    job = site.deployment.wait_terminal([job_id], timeout=120)[0]
    assert job.state == JobState.ERROR.value
    assert job.reason == "declared output not produced: out.txt", job.reason
    assert not (site.working(job_id) / "out.txt").exists()
    assert job.stdout_tail == "done\n"
    assert "stage_out_rejected" in site.deployment.logs()


def test_staging_input_missing_on_submitter_ends_error(site: Site):
    site.staging_worker("stager@%h")
    gone = str(site.inputs / "gone.txt")
    job_id = site.submit(f"cat {_q(gone)}", [gone], [])
    job = site.deployment.wait_terminal([job_id], timeout=120)[0]
    assert job.state == JobState.ERROR.value
    assert job.reason == f"input not found on the submitter's host: {gone}"


def test_staging_submitter_unreachable_for_a_while_delays_the_job_and_never_fails_it(site: Site):
    """The submitter's sshd down when the job is staged in: the launch is retried (the
    network's fault, not the job's) and the job runs once, ok, when the host is back. A
    refused key or a changed host key, by contrast, fails the job at once."""
    site.staging_worker("stager@%h")
    data = site.input("later.txt", b"arrived late\n")
    site.sshd.close()
    try:
        job_id = site.submit(f"cat {_q(data)} > copy.txt", [data], ["copy.txt"])
        site.deployment.wait_until(lambda: "StagingUnreachable" in site.deployment.logs(), 60,
                                   "a stage-in retried while the submitter is unreachable")
        waiting = site.deployment.job(job_id)
        assert JobState(waiting.state) not in TERMINAL, waiting.reason
    finally:
        site.sshd.start()
    job = site.deployment.wait_terminal([job_id], timeout=180)[0]
    assert job.state == JobState.OK.value, (job.reason, site.deployment.logs()[-3000:])
    assert (site.working(job_id) / "copy.txt").read_bytes() == b"arrived late\n"
    assert site.deployment.history(job_id).count(JobState.RUNNING) == 1


def test_staging_cancel_stops_the_staged_job(site: Site):
    """A cancel reaches the job where it runs, in the staging worker's directory: it stops,
    and its end (what it left) still comes home."""
    site.staging_worker("stager@%h")
    job_id = site.submit("echo started; exec sleep 300", [], [])
    site.deployment.wait_until(lambda: site.deployment.job(job_id).state == JobState.RUNNING.value, 60, "running")
    result = site.deployment.cli("cancel", job_id)
    assert result.returncode == 0, result.stderr
    assert site.deployment.wait_terminal([job_id], timeout=60)[0].state == JobState.DELETED.value
    site.deployment.wait_until((site.jobs / job_id / "ended").exists, 60, "the end note of the cancelled job sent home")
    assert (site.jobs / job_id / "stdout").read_text() == "started\n"


@pytest.mark.faults
def test_staging_worker_killed_during_stage_out(site: Site):
    """The staging worker SIGKILLed after the outputs are home but before the end is: the job
    is not recorded meanwhile; a restarted worker sends everything again, and the job ends
    once, ok, with whole outputs."""
    first = site.staging_worker("stager1@%h", GALAXY_TASKS_CRASH_POINTS="stage_out")
    big, big_sha = site.big_input("big.bin")
    job_id = site.submit(f"cp {_q(big)} big.out && echo small > small.out", [big], ["big.out", "small.out"])
    marker = site.tmp / f"crashed-stage_out-{job_id}"
    site.deployment.wait_until(marker.exists, 180, "the crash during stage-out")
    first.kill()
    time.sleep(1)
    assert site.deployment.job(job_id).state == JobState.RUNNING.value
    assert not (site.jobs / job_id / "exit_code").exists()  # the end travels last
    site.staging_worker("stager2@%h")
    job = site.deployment.wait_terminal([job_id], timeout=180)[0]
    assert job.state == JobState.OK.value, job.reason
    assert _sha256(site.working(job_id) / "big.out") == big_sha
    assert (site.working(job_id) / "small.out").read_text() == "small\n"
    history = site.deployment.history(job_id)
    assert sum(state in TERMINAL for state in history) == 1, history


@pytest.mark.faults
def test_staging_worker_killed_during_stage_in(tmp_path: Path, make_deployment, sshd: Sshd):
    """The whole staging worker SIGKILLed after its inputs arrived but before they were
    checked: once the launch lease is up, reconciliation takes the launch over on a
    restarted worker, which checks what arrived (fetching again whatever is not whole), and
    the job runs once, on whole inputs."""
    site = Site(tmp_path, make_deployment, sshd, GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_LAUNCH_LEASE="3",
                GALAXY_TASKS_CHECK_AFTER="3", GALAXY_TASKS_CHECK_AFTER_MAX="5")
    site.deployment.beat()
    first = site.staging_worker("stager1@%h", GALAXY_TASKS_CRASH_POINTS="stage_in")
    big, big_sha = site.big_input("big.bin")
    job_id = site.submit(f"sha256sum < {_q(big)} > big.sha && echo once >> runs.txt", [big], ["big.sha", "runs.txt"])
    token = site.deployment.job(job_id).token
    site.deployment.wait_until((site.tmp / f"crashed-stage_in-{token}").exists, 180, "the crash during stage-in")
    first.kill()
    site.staging_worker("stager2@%h")
    job = site.deployment.wait_terminal([job_id], timeout=240)[0]
    assert job.state == JobState.OK.value, job.reason
    assert (site.working(job_id) / "big.sha").read_text().split()[0] == big_sha
    assert (site.working(job_id) / "runs.txt").read_text() == "once\n"
    history = site.deployment.history(job_id)
    assert history.count(JobState.RUNNING) == 1 and sum(state in TERMINAL for state in history) == 1, history


def test_staging_overhead_of_a_small_job(site: Site):
    """A small job (one small input, one output) staged against the same job on a destination
    that shares the submitter's files, one at a time: submit to end, from the rows."""
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"x\n")
    spent: dict[str, list[float]] = {"staged": [], "plain": []}
    for _ in range(5):
        for destination in spent:
            job_id = site.submit(f"cp {_q(a)} out.txt", [a], ["out.txt"], destination=destination)
            job = site.deployment.wait_terminal([job_id], timeout=60)[0]
            assert job.state == JobState.OK.value, job.reason
            assert job.ended_at is not None
            spent[destination].append((job.ended_at - job.created_at).total_seconds())
    staged, plain = (sorted(spent[d])[2] for d in ("staged", "plain"))
    print(f"\nstaging figures: a small job, submit to end (median of 5): staged {staged:.2f} s, "
          f"shared filesystem {plain:.2f} s, overhead {staged - plain:.2f} s")
    assert staged - plain < 5.0, spent


def _figures(site: Site, job_id: str, big: str) -> None:
    """Staging's throughput for the 100 MB input against plain rsync of the same file over
    the same sshd, printed for docs/staging.md (`pytest -k staging -s`)."""
    logs = site.deployment.logs()
    staged_in = re.search(rf"event=staged_in job_id={job_id} files=\d+ bytes=(\d+) seconds=([\d.]+)", logs)
    staged_out = re.search(rf"event=staged_out job_id={job_id} files=\d+ .*?seconds=([\d.]+)", logs)
    assert staged_in and staged_out, logs[-3000:]
    target = site.tmp / "plain-rsync"
    target.mkdir()
    ssh = (f"ssh -i {site.sshd.identity} -p {PORT} -o BatchMode=yes -o UserKnownHostsFile={site.sshd.known_hosts}")
    started = time.monotonic()
    subprocess.run(["rsync", "--times", "-e", ssh, f"127.0.0.1:{big}", f"{target}/"], check=True)
    plain = time.monotonic() - started
    mb = int(staged_in.group(1)) / 1e6
    print(f"\nstaging figures: stage-in {mb:.0f} MB in {staged_in.group(2)} s "
          f"({mb / float(staged_in.group(2)):.0f} MB/s, sizes and sha256 checked on both sides); "
          f"plain rsync of the 100 MB file {plain:.2f} s ({BIG_MB * 1.048576 / plain:.0f} MB/s); "
          f"stage-out of the outputs (100 MB) {staged_out.group(1)} s")
