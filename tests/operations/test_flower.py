"""Flower for real: Redis-backed workers, `galaxy-tasks flower`, and a headless Chromium that
is refused without credentials, logs in, and sees every task of a job with its job id and
tool id. Its screenshot goes to a temporary directory; `ops/flower-screenshot.sh` runs this
test to write the one the docs show (docs/flower-tasks.png)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.browser import Browser, find_chromium, free_port
from tests.support.deployment import ROOT

pytestmark = pytest.mark.integration

USER, PASSWORD = "operator", "flower-test-pw-7Qz"

STEP_TASKS = ("galaxy_tasks.prepare_job", "galaxy_tasks.launch_job", "galaxy_tasks.finish_job")


class Flower:
    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.handle = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "galaxy_tasks.cli", "flower", "--port", str(self.port), *args],
            env=env, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while status(self.url + "/healthcheck") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Flower did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def api(self, path: str) -> object:
        return json.loads(fetch(self.url + path, auth=(USER, PASSWORD)))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.handle.close()


def fetch(url: str, auth: tuple[str, str] | None = None) -> str:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def status(url: str, auth: tuple[str, str] | None = None) -> int:
    try:
        fetch(url, auth)
        return 200
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_flower_refuses_to_start_without_credentials(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GALAXY_TASKS_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "flower", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "GALAXY_TASKS_FLOWER_BASIC_AUTH" in result.stderr and "--unauthenticated" in result.stderr
    bad = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "flower"], capture_output=True, text=True,
                         env={**env, "GALAXY_TASKS_FLOWER_BASIC_AUTH": "nopassword"}, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "user:password" in bad.stderr and "nopassword" not in bad.stderr
    argv = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "flower", "--basic-auth=a:b"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert argv.returncode == 2 and "not on the command line" in argv.stderr
    for empty in (["--auth="], ["--auth", ""], ["--auth=  "]):
        open_to_all = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "flower", *empty], capture_output=True,
                                     text=True, env=env, timeout=60, cwd=ROOT)
        assert open_to_all.returncode == 2 and "--auth needs a value" in open_to_all.stderr, empty
    shown = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "config"], capture_output=True, text=True,
                           env={**env, "GALAXY_TASKS_FLOWER_BASIC_AUTH": "admin:zz9-secret"}, timeout=60, cwd=ROOT)
    assert shown.returncode == 0 and "zz9-secret" not in shown.stdout
    assert "GALAXY_TASKS_FLOWER_BASIC_AUTH    (set, hidden)" in shown.stdout


def test_credentials_come_from_the_variable_or_the_file(tmp_path):
    from galaxy_tasks.operations.flower import AuthError, credentials

    assert credentials({}) == []
    assert credentials({"GALAXY_TASKS_FLOWER_BASIC_AUTH": "a:1, b:2"}) == ["a:1", "b:2"]
    users = tmp_path / "users"
    users.write_text("# comment\nops:pw one\n\n")
    assert credentials({"GALAXY_TASKS_FLOWER_BASIC_AUTH_FILE": str(users)}) == ["ops:pw one"]
    assert credentials({"FLOWER_BASIC_AUTH": "f:3"}) == ["f:3"]
    for bad in ({"GALAXY_TASKS_FLOWER_BASIC_AUTH": "a:"}, {"GALAXY_TASKS_FLOWER_BASIC_AUTH": ":x"},
                {"GALAXY_TASKS_FLOWER_BASIC_AUTH_FILE": str(tmp_path / "missing")}):
        with pytest.raises(AuthError):
            credentials(bad)


def test_flower_login_and_job_tasks_in_a_real_browser(deployment, tmp_path):
    find_chromium()  # before anything starts: fails under CI, skips elsewhere, if absent
    deployment.worker("galaxy_tasks", "steps@%h")
    deployment.worker("local", "local@%h")
    secrets = tmp_path / "flower-users"
    secrets.write_text(f"# user:password per line\n{USER}:{PASSWORD}\n")
    secrets.chmod(0o600)
    flower = Flower({**deployment.env, "GALAXY_TASKS_FLOWER_BASIC_AUTH_FILE": str(secrets)}, tmp_path / "flower.log")
    browser = None
    try:
        # Flower is up before the jobs, so it sees every task event
        deployment.wait_until(lambda: len(flower.api("/api/workers?refresh=1")) >= 2, 30, "both workers in Flower")
        jobs = {deployment.submit("echo aligned > out.bam", "bwa_mem", "--output", "out.bam"): "bwa_mem",
                deployment.submit("sleep 0.2; echo sorted", "samtools_sort"): "samtools_sort"}
        assert {j.state for j in deployment.wait_terminal(list(jobs))} == {"ok"}

        def seen_by_flower() -> bool:
            tasks = flower.api("/api/tasks").values()
            done = {(t["name"], t["kwargs"]) for t in tasks if t.get("state") == "SUCCESS"}
            return all(any(name == task and job_id in kwargs for task, kwargs in done)
                       for job_id in jobs for name in STEP_TASKS)

        deployment.wait_until(seen_by_flower, 30, "every step task of both jobs in Flower")

        # no credentials: nothing but the health check
        for path in ("/", "/tasks", "/workers", "/api/tasks", "/api/workers", "/metrics"):
            assert status(flower.url + path) == 401, path
            assert status(flower.url + path, ("operator", "wrong")) == 401, path
        assert status(flower.url + "/healthcheck") == 200
        metrics = fetch(flower.url + "/metrics", (USER, PASSWORD))
        assert 'flower_events_total{task="galaxy_tasks.launch_job",type="task-succeeded"' in metrics
        assert "flower_task_runtime_seconds_bucket" in metrics and "flower_worker_online" in metrics

        queues = {q["name"] for q in flower.api("/api/queues/length")["active_queues"]}
        assert {"galaxy_tasks", "local"} <= queues, queues

        browser = Browser()
        browser.get(flower.url + "/tasks")
        assert browser.responses()[flower.url + "/tasks"] == 401

        browser.basic_auth(USER, PASSWORD)
        browser.get(flower.url + "/")
        browser.wait_for("return document.body.innerText.includes('local@') && "
                         "document.body.innerText.includes('steps@')", what="both workers")
        browser.get(flower.url + "/broker")
        browser.wait_for("return document.body.innerText.includes('galaxy_tasks') && "
                         "document.body.innerText.includes('local')", what="both queues on the broker page")
        browser.get(flower.url + "/tasks")
        rows = browser.wait_for(
            "const rows = [...document.querySelectorAll('#tasks-table tbody tr')].map(r => r.innerText);"
            "return rows.filter(r => r.includes('galaxy_tasks.')).length >= 6 ? rows : null;",
            what="the job tasks in the tasks table")
        for job_id, tool_id in jobs.items():
            mine = [row for row in rows if job_id in row]
            for name in STEP_TASKS:
                assert any(name in row for row in mine), (name, job_id, rows)
            for name in STEP_TASKS[:2]:  # prepare and launch carry the tool id; shown first
                assert any(name in row and f"tool_id={tool_id} job_id={job_id}" in row for row in mine), rows
            assert any(STEP_TASKS[2] in row and f"exit_code=0 job_id={job_id}" in row for row in mine), rows
        assert browser.run("return document.querySelector('#tasks-table th[data-column=kwargs]') !== null")
        screenshot = Path(os.environ.get("GT_FLOWER_SCREENSHOT") or tmp_path / "flower-tasks.png")
        browser.screenshot(screenshot)
        assert screenshot.stat().st_size > 10_000
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        if browser is not None:
            browser.close()
        flower.stop()
    assert PASSWORD not in (tmp_path / "flower.log").read_text()
