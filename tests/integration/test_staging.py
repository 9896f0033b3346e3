"""Destinations without a shared filesystem (docs/staging.md), for real: an sshd of the
test's own on 127.0.0.1, rsync over it, and a worker started in a mount namespace of its own
where the jobs root and the inputs' directory are empty tmpfs, so it truly cannot see the
submitter's files; everything it runs came over ssh, and everything the submitter sees of a
job came back the same way."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from galaxy_tasks.states import TERMINAL, JobState
from tests.support.redis_server import free_port
from tests.support.sshd import Sshd, own_sshd

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("staging")]

PORT = 2299
#: the large input and output of a job: a few hundred MB, streamed and hashed on both sides
BIG_MB = 300
#: the http transfer's signing secret: the submitter's steps worker and staging server hold it,
#: the staging worker does not
SECRET = "a staging secret that only the submitter's side holds"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    yield from own_sshd(tmp_path_factory.mktemp("sshd"), PORT)


class Site:
    """A submitter (its steps worker sees the jobs root and the inputs) and a staging worker
    that sees neither."""

    def __init__(self, tmp: Path, make_deployment, sshd: Sshd, **env: str) -> None:
        self.tmp, self.sshd = tmp, sshd
        self.http_port = free_port()
        self.server: subprocess.Popen | None = None
        # the http transfer through a meddler of the test's own: one that adds a byte to each
        # file it carries, one that carries only the first half of each (its length adjusted)
        self.proxies = {"http_tampered": Meddler(self.http_port, lambda body: body + b"X"),
                        "http_truncated": Meddler(self.http_port, lambda body: body[:len(body) // 2])}
        urls = {"http": f"http://127.0.0.1:{self.http_port}",
                **{name: f"http://127.0.0.1:{proxy.port}" for name, proxy in self.proxies.items()}}
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
            + "".join(f"  {name}:\n    runner: local\n    queue: {name}\n    shared_filesystem: false\n"
                      f"    staging:\n      transfer: http\n      url: {url}\n      connect_timeout_s: 5\n"
                      f"      root: {tmp / 'staged' / name}\n      max_bytes: {2 << 30}\n"
                      for name, url in urls.items())
            + "  plain:\n    runner: local\n    queue: plain\ndefault: staged\n")
        self.deployment = make_deployment(GALAXY_TASKS_JOB_CONF=str(conf), GALAXY_TASKS_CRASH_DIR=str(tmp), **env)
        # the submitter's own worker also serves `plain`, a destination that shares its files
        self.deployment.worker("galaxy_tasks,galaxy_tasks.ends,plain", "steps@%h",
                               env={"GALAXY_TASKS_STAGING_SECRET": SECRET})

    def staging_worker(self, name: str, **env: str):
        hide = 'mount -t tmpfs hidden "$1" && mount -t tmpfs hidden "$2" && shift 2 && exec "$@"'
        return self.deployment.worker("staged,tampered,tampered_out,http,http_tampered,http_truncated", name, env=env,
                                      prefix=[
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", hide, "sh",
            str(self.jobs), str(self.inputs)])

    def staging_server(self) -> subprocess.Popen:
        """`galaxy-tasks staging-server` on the submitter's side, once it answers."""
        log = open(self.tmp / "staging-server.log", "ab")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "galaxy_tasks.cli", "staging-server"], stdout=log, stderr=subprocess.STDOUT,
            env={**self.deployment.env, "GALAXY_TASKS_STAGING_SECRET": SECRET,
                 "GALAXY_TASKS_STAGING_LISTEN": f"127.0.0.1:{self.http_port}"}, start_new_session=True)

        def answers() -> bool:
            assert self.server is not None and self.server.poll() is None, \
                (self.tmp / "staging-server.log").read_text()
            try:
                return _request(self.http_port, "GET", "/").status == 404
            except OSError:
                return False

        self.deployment.wait_until(answers, 30, "the staging server")
        return self.server

    def stop_staging_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, 15)
            self.server.wait(timeout=30)

    def close(self) -> None:
        self.stop_staging_server()
        for proxy in self.proxies.values():
            proxy.close()

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
def site(tmp_path: Path, make_deployment, sshd: Sshd):
    made = Site(tmp_path, make_deployment, sshd)
    yield made
    made.close()


class Meddler:
    """A proxy in front of the staging server that changes what it carries: each input's
    body on its way to the worker, each uploaded file's on its way home (the length header
    made to match, so only the size and the hash can tell)."""

    def __init__(self, upstream: int, change) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers["Content-Length"])))

            def do_PUT(self) -> None:  # the outputs only: the end itself comes home as it left
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self._forward(change(body) if "/stage-out/working/" in self.path else body)

            def _forward(self, body: bytes | None) -> None:
                headers = {name: value for name, value in self.headers.items() if name.lower() != "content-length"}
                answer = _request(upstream, self.command, self.path, body, headers)
                data = answer.read()
                if self.command == "GET" and self.path.split("?")[0].endswith("/input") and answer.status == 200:
                    data = change(data)
                self.send_response(answer.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    return connection.getresponse()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _q(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


def test_staging_inputs_in_outputs_home(site: Site):
    """Several inputs (one of BIG_MB MiB, one in a directory with a space) in, several outputs
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


@pytest.mark.parametrize("destination", ["staged", "http"])
def test_staging_directory_in_files_home_at_their_own_paths_and_rewritten_copies(site: Site, destination: str):
    """A directory input (a file in it, an empty directory), a return at the submitter's own
    path and the directory itself returned, a script declared for rewriting: the job runs the
    rewritten copy against the staged copies; what it made comes home where the submitter
    named it, what it left as it came and the rewritten script do not (over rsync and http)."""
    if destination == "http":
        site.staging_server()
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
        "returns": [str(tree), str(result)], "rewrite": [script], "destination": destination}])[0]
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
@pytest.mark.parametrize("destination", ["staged", "http"])
def test_staging_worker_killed_during_stage_out(site: Site, destination: str):
    """The staging worker SIGKILLed after the outputs are home but before the end is: the job
    is not recorded meanwhile; a restarted worker sends everything again, and the job ends
    once, ok, with whole outputs (over rsync and over http)."""
    if destination == "http":
        site.staging_server()
    first = site.staging_worker("stager1@%h", GALAXY_TASKS_CRASH_POINTS="stage_out")
    big, big_sha = site.big_input("big.bin")
    job_id = site.submit(f"cp {_q(big)} big.out && echo small > small.out", [big], ["big.out", "small.out"],
                         destination=destination)
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
@pytest.mark.parametrize("destination", ["staged", "http"])
def test_staging_worker_killed_during_stage_in(tmp_path: Path, make_deployment, sshd: Sshd, destination: str):
    """The whole staging worker SIGKILLed after its inputs arrived but before they were
    checked: once the launch lease is up, reconciliation takes the launch over on a
    restarted worker, which checks what arrived (fetching again whatever is not whole), and
    the job runs once, on whole inputs (over rsync and over http)."""
    site = Site(tmp_path, make_deployment, sshd, GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_LAUNCH_LEASE="3",
                GALAXY_TASKS_CHECK_AFTER="3", GALAXY_TASKS_CHECK_AFTER_MAX="5")
    try:
        if destination == "http":
            site.staging_server()
        site.deployment.beat()
        first = site.staging_worker("stager1@%h", GALAXY_TASKS_CRASH_POINTS="stage_in")
        big, big_sha = site.big_input("big.bin")
        job_id = site.submit(f"sha256sum < {_q(big)} > big.sha && echo once >> runs.txt", [big],
                             ["big.sha", "runs.txt"], destination=destination)
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
    finally:
        site.close()


def test_staging_overhead_of_a_small_job(site: Site):
    """A small job (one small input, one output) staged against the same job on a destination
    that shares the submitter's files, one at a time: submit to end, from the rows."""
    site.staging_server()
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"x\n")
    spent: dict[str, list[float]] = {"staged": [], "http": [], "plain": []}
    for _ in range(5):
        for destination in spent:
            job_id = site.submit(f"cp {_q(a)} out.txt", [a], ["out.txt"], destination=destination)
            job = site.deployment.wait_terminal([job_id], timeout=60)[0]
            assert job.state == JobState.OK.value, job.reason
            assert job.ended_at is not None
            spent[destination].append((job.ended_at - job.created_at).total_seconds())
    staged, over_http, plain = (sorted(spent[d])[2] for d in ("staged", "http", "plain"))
    print(f"\nstaging figures: a small job, submit to end (median of 5): staged over rsync {staged:.2f} s, "
          f"over http {over_http:.2f} s, shared filesystem {plain:.2f} s; overhead rsync {staged - plain:.2f} s, "
          f"http {over_http - plain:.2f} s")
    assert staged - plain < 5.0 and over_http - plain < 5.0, spent


def _figures(site: Site, job_id: str, big: str, transfer: str = "rsync") -> None:
    """Staging's throughput for the BIG_MB MiB input against plain rsync of the same file over
    the same sshd and plain cp, printed for docs/staging.md (`pytest -k staging -s`)."""
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
    started = time.monotonic()
    subprocess.run(["cp", big, str(site.tmp / "plain-cp")], check=True)
    copied = time.monotonic() - started
    mb = int(staged_in.group(1)) / 1e6
    print(f"\nstaging figures ({transfer}): stage-in {mb:.0f} MB in {staged_in.group(2)} s "
          f"({mb / float(staged_in.group(2)):.0f} MB/s, sizes and sha256 checked on both sides); "
          f"plain rsync of the {BIG_MB} MiB file {plain:.2f} s ({BIG_MB * 1.048576 / plain:.0f} MB/s); "
          f"plain cp {copied:.2f} s ({BIG_MB * 1.048576 / copied:.0f} MB/s); "
          f"stage-out of the outputs ({BIG_MB} MiB and small files) {staged_out.group(1)} s")


# -- the http transfer: `galaxy-tasks staging-server` on the submitter's side ------------------


def test_staging_http_inputs_in_outputs_home(site: Site):
    """The http transfer: several inputs in, several outputs back; the job ends ok with the
    right content, and neither its tokens nor the secret are in what the job could see."""
    site.staging_server()
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"first\n")
    b = site.input("sub dir/b.txt", b"second\n")
    big, big_sha = site.big_input("big.bin")
    script = site.input("run.sh", b"#!/bin/sh\necho ran\n")
    os.chmod(script, 0o755)  # run as it is: it must arrive executable
    command = (f"cat {_q(a)} {_q(b)} > joined.txt && cp {_q(big)} big.out && mkdir -p sub && "
               f"sha256sum < {_q(big)} > sub/big.sha && ls -A {_q(str(site.inputs))} > seen.txt && env > env.txt && "
               f"{_q(script)}")
    job_id = site.submit(command, [a, b, big, script], ["joined.txt", "big.out", "sub/big.sha", "seen.txt", "env.txt"],
                         destination="http")
    job = site.deployment.wait_terminal([job_id], timeout=240)[0]
    assert job.state == JobState.OK.value, (job.reason, site.deployment.logs()[-3000:])
    working = site.working(job_id)
    assert (working / "joined.txt").read_bytes() == b"first\nsecond\n"
    assert _sha256(working / "big.out") == big_sha
    assert (working / "sub" / "big.sha").read_text().split()[0] == big_sha
    assert (working / "seen.txt").read_text() == ""
    assert job.stdout_tail == "ran\n"
    assert not (site.jobs / job_id / ".stage-out").exists()
    assert site.deployment.history(job_id).count(JobState.OK) == 1
    tokens = json.loads(site.deployment.job(job_id).staging_tokens or "{}")
    assert tokens and set(tokens) == {"in", "out"}
    seen = (working / "env.txt").read_text() + (site.jobs / job_id / "job.sh").read_text()
    assert not any(token in seen for token in tokens.values()) and SECRET not in seen
    assert not any(token in site.deployment.logs() for token in tokens.values())
    _figures(site, job_id, big, transfer="http")


def test_staging_http_missing_output_ends_error_naming_it(site: Site):
    site.staging_server()
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"in\n")
    job_id = site.submit(f"cp {_q(a)} made.txt", [a], ["made.txt", "never.txt"], destination="http")
    job = site.deployment.wait_terminal([job_id], timeout=120)[0]
    assert job.state == JobState.ERROR.value
    assert job.reason == "declared output not produced: never.txt"
    assert (site.working(job_id) / "made.txt").read_bytes() == b"in\n"


@pytest.mark.parametrize("destination", ["http_tampered", "http_truncated"])
def test_staging_http_tampered_or_truncated_transfer_is_caught(site: Site, destination: str):
    """An input that arrives other than it left (a byte more, or half of it) is never run
    on; an output that does so is never taken for it. Each job ends error naming the file."""
    site.staging_server()
    site.staging_worker("stager@%h")
    a = site.input("a.txt", b"genuine input\n")
    job_in = site.submit(f"cat {_q(a)} > out.txt", [a], ["out.txt"], destination=destination)
    job_out = site.submit("echo made by the job > out.txt && echo done", [], ["out.txt"], destination=destination)
    ended = {job.id: job for job in site.deployment.wait_terminal([job_in, job_out], timeout=120)}
    assert ended[job_in].state == JobState.ERROR.value
    assert "input arrived other than it left" in (ended[job_in].reason or "") and a in (ended[job_in].reason or "")
    assert not (site.working(job_in) / "out.txt").exists()
    assert ended[job_out].state == JobState.ERROR.value
    assert ended[job_out].reason == "declared output not produced: out.txt", ended[job_out].reason
    assert not (site.working(job_out) / "out.txt").exists()
    assert ended[job_out].stdout_tail == "done\n"


def test_staging_http_token_of_one_job_cannot_reach_another(site: Site):
    """Asked directly, the server lets one job's tokens read only that job's inputs and
    write only into that job's staging area, each token in its own direction."""
    site.staging_server()
    mine, theirs = site.input("mine.txt", b"mine\n"), site.input("theirs.txt", b"theirs\n")
    # no staging worker: both jobs wait, prepared, their tokens in their rows
    job_a = site.submit(f"cat {_q(mine)}", [mine], [], destination="http")
    job_b = site.submit(f"cat {_q(theirs)}", [theirs], [], destination="http")
    site.deployment.wait_until(lambda: all(site.deployment.job(j).staging_tokens for j in (job_a, job_b)), 60,
                               "both jobs prepared")
    tokens = json.loads(site.deployment.job(job_a).staging_tokens)

    def ask(method: str, path: str, token: str, body: bytes | None = None) -> tuple[int, str]:
        answer = _request(site.http_port, method, path, body, {"Authorization": f"Bearer {token}",
                                                               "Content-Length": str(len(body or b""))})
        return answer.status, answer.read().decode()

    quoted = urllib.parse.quote
    assert ask("GET", f"/v1/jobs/{job_a}/input?path={quoted(mine)}", tokens["in"]) == (200, "mine\n")
    assert ask("GET", f"/v1/jobs/{job_b}/inputs", tokens["in"])[0] == 403
    assert ask("GET", f"/v1/jobs/{job_b}/input?path={quoted(theirs)}", tokens["in"])[0] == 403
    assert ask("GET", f"/v1/jobs/{job_a}/input?path={quoted(theirs)}", tokens["in"])[0] == 403
    assert ask("GET", f"/v1/jobs/{job_a}/input?path=/etc/passwd", tokens["in"])[0] == 403
    assert ask("GET", f"/v1/jobs/{job_a}/input?path={quoted(mine)}", tokens["out"])[0] == 401  # the wrong way
    assert ask("PUT", f"/v1/jobs/{job_a}/stage-out/working/x", tokens["in"], b"x")[0] == 401
    assert ask("PUT", f"/v1/jobs/{job_b}/stage-out/working/x", tokens["out"], b"x")[0] == 403
    for climbing in (f"../../{job_b}/working/x", quoted(f"../../{job_b}/working/x", safe=""), "%2Fetc%2Fx"):
        assert ask("PUT", f"/v1/jobs/{job_a}/stage-out/{climbing}", tokens["out"], b"x")[0] in (403, 404)
    forged = tokens["in"][:-4] + ("AAAA" if not tokens["in"].endswith("AAAA") else "BBBB")
    assert ask("GET", f"/v1/jobs/{job_a}/inputs", forged)[0] == 401
    # a link in the staging area does not lead the upload out of the job's directory
    (site.jobs / job_a / ".stage-out").mkdir()
    (site.jobs / job_a / ".stage-out" / "working").symlink_to(site.jobs / job_b)
    assert ask("PUT", f"/v1/jobs/{job_a}/stage-out/working/x", tokens["out"], b"x")[0] == 403
    assert not (site.jobs / job_b / "x").exists()
    status, said = ask("POST", f"/v1/jobs/{job_a}/commit", tokens["out"],
                       json.dumps({"files": [[f"../{job_b}/job.sh", "0" * 64]], "last": False}).encode())
    assert status == 403, said
    for place in (str(site.jobs / job_b / "x"), "/etc/x", str(site.jobs / job_a / ".." / job_b / "x")):
        status, said = ask("POST", f"/v1/jobs/{job_a}/commit", tokens["out"],
                           json.dumps({"files": [["working/x", "0" * 64, place]], "last": False}).encode())
        assert status == 403, (place, said)
    # its own staging area it may write, and commit into place once the hash matches
    (site.jobs / job_a / ".stage-out" / "working").unlink()
    assert ask("PUT", f"/v1/jobs/{job_a}/stage-out/working/x", tokens["out"], b"x")[0] == 200
    status, said = ask("POST", f"/v1/jobs/{job_a}/commit", tokens["out"], json.dumps(
        {"files": [["working/x", hashlib.sha256(b"x").hexdigest()]], "last": True}).encode())
    assert (status, json.loads(said)) == (200, {"rejected": []})
    assert (site.working(job_a) / "x").read_bytes() == b"x"
    assert "staging_refused" in (site.tmp / "staging-server.log").read_text()
    assert not any(token in (site.tmp / "staging-server.log").read_text() for token in tokens.values())


def test_staging_http_server_unreachable_for_a_while_delays_the_job_and_never_fails_it(site: Site):
    """No staging server when the job is staged in: the launch is retried, and the job runs
    once, ok, when the server is up."""
    site.staging_worker("stager@%h")
    data = site.input("later.txt", b"arrived late\n")
    job_id = site.submit(f"cat {_q(data)} > copy.txt", [data], ["copy.txt"], destination="http")
    site.deployment.wait_until(lambda: "StagingUnreachable" in site.deployment.logs(), 60,
                               "a stage-in retried while the staging server is down")
    waiting = site.deployment.job(job_id)
    assert JobState(waiting.state) not in TERMINAL, waiting.reason
    site.staging_server()
    job = site.deployment.wait_terminal([job_id], timeout=180)[0]
    assert job.state == JobState.OK.value, (job.reason, site.deployment.logs()[-3000:])
    assert (site.working(job_id) / "copy.txt").read_bytes() == b"arrived late\n"
    assert site.deployment.history(job_id).count(JobState.RUNNING) == 1


def test_staging_http_fetch_resumes_what_a_killed_fetch_left_and_never_keeps_a_wrong_part(site: Site, tmp_path: Path):
    """What a killed fetch left (`<name>.http-part`) is resumed after, and the whole file is
    checked: a part that was not right is caught, removed, and the next try fetches the file
    afresh; a part that was right is kept and only the rest is asked for."""
    from galaxy_tasks.errors import StagingError
    from galaxy_tasks.staging.http import PART, Http
    from galaxy_tasks.staging.settings import StagingSettings

    site.staging_server()
    big, big_sha = site.big_input("big.bin")
    job_id = site.submit(f"cat {_q(big)}", [big], [], destination="http")  # no staging worker: it waits
    site.deployment.wait_until(lambda: site.deployment.job(job_id).staging_tokens is not None, 60, "prepared")
    settings = StagingSettings(transfer="http", url=f"http://127.0.0.1:{site.http_port}", root=str(tmp_path),
                               max_bytes=1 << 30)
    client = Http(settings).bound(job_id, json.loads(site.deployment.job(job_id).staging_tokens))
    assert client.digests([big])[big] == (BIG_MB << 20, big_sha)
    into = tmp_path / "copy"
    copy = into / big.lstrip("/")
    copy.parent.mkdir(parents=True)
    part = copy.with_name(copy.name + PART)
    part.write_bytes(b"not what the submitter holds")
    with pytest.raises(StagingError, match="input arrived other than it left"):
        client.fetch([big], into)
    assert not part.exists() and not copy.exists()
    half = BIG_MB << 19
    with open(big, "rb") as source:
        part.write_bytes(source.read(half))  # the first half, as a killed fetch leaves it
    with open(big, "r+b") as source:  # the submitter's first half changed since: only a resumed
        source.write(bytes(half))      # fetch (the second half) still ends the file it listed
    client.fetch([big], into)
    assert _sha256(copy) == big_sha and not part.exists()
