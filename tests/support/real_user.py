"""Real Unix users and a deployment of the privileged helper (galaxy-tasks-run-as), shared by
the real-user tests of every runner: users and a group made here, the helper run as root as
sudo would run it, the job's row in a database of its own."""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import site as sitepackages
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import pytest

from galaxy_tasks import jobdir
from galaxy_tasks.jobdir import JobDir, job_environment
from galaxy_tasks.model import utcnow
from galaxy_tasks.realuser.handover import galaxy_place
from galaxy_tasks.runas import mark_for_handover
from galaxy_tasks.runners.base import Launch
from galaxy_tasks.runners.local import LocalRunner
from galaxy_tasks.store import Store, schema

if TYPE_CHECKING:
    from tests.unit.test_local_runner import Reports

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
HELPER = [sys.executable, "-m", "galaxy_tasks.realuser.helper"]
#: a job command that waits until the test touches `gate` in the job's working directory
GATED = "while [ ! -e gate ]; do sleep 0.2; done"

needs_root = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="making Unix users and dropping privileges needs root (CI runs as root)")


@dataclass(frozen=True)
class Users:
    """The test's Unix users: two allowed ones, one outside the group, one system user."""

    alice: str
    bob: str
    eve: str  # not in the allowed group
    system: str  # in the group, but under the minimum uid
    group: str


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def ensure_user(name: str, *, group: str | None = None, system: bool = False) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run("useradd", "--no-create-home", "--shell", "/bin/sh", *(["--system"] if system else []),
             *(["--groups", group] if group else []), name)


@pytest.fixture(scope="module")
def unix_users() -> Iterator[Users]:
    """Made idempotently (a run that died left them: they are taken as they are) and removed."""
    tag = f"{WORKER}p{os.getpid()}"  # two test runs at once must not remove each other's users
    names = Users(f"gtrualice{tag}", f"gtrubob{tag}", f"gtrueve{tag}", f"gtrusys{tag}", f"gtrujobs{tag}")
    try:
        grp.getgrnam(names.group)
    except KeyError:
        _run("groupadd", names.group)
    for name in (names.alice, names.bob):
        ensure_user(name, group=names.group)
    ensure_user(names.eve)
    ensure_user(names.system, group=names.group, system=True)
    yield names
    for name in (names.alice, names.bob, names.eve, names.system):
        subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", names.group], capture_output=True)


@dataclass
class Site:
    """A deployment of the helper: its root-owned configuration, jobs root and database."""

    base: Path
    jobs_root: Path
    config: Path
    log_file: Path
    store: Store
    users: Users
    handover_root: Path  # where a job's declared directory may be (the configuration's handover_roots)

    @property
    def command(self) -> str:
        """A destination's run_as_command for this deployment."""
        return " ".join([*HELPER, str(self.config)])

    def job(self, command: str, user: str | None, *, state: str = "submitting", job_dir: Path | None = None,
            walltime_s: int | None = None, handover_dir: Path | None = None) -> Launch:
        """A job's row and directory, as prepare and the launch's claim leave them."""
        job_id = f"ru{uuid.uuid4().hex[:12]}"
        root = job_dir or self.jobs_root / job_id
        token = jobdir.new_token()
        env = job_environment(JobDir(root), cores=1, memory_mb=None, spec_env={}, destination_env={},
                              mesos_url="", job_id=job_id)
        created = jobdir.create(root, command, env, None, token=token)
        now = utcnow()
        assert self.store.create(dict(id=job_id, tool_id="t", command=command, destination="local", queue="local",
                                      state=state, job_dir=str(root), token=token, run_as=user, created_at=now,
                                      updated_at=now, handover_dir=str(handover_dir) if handover_dir else None))
        return Launch(job_id=job_id, job_dir=root, script=created.script, walltime_s=walltime_s, run_as=user)

    def helper(self, action: str, job_id: str) -> subprocess.CompletedProcess[str]:
        """The helper as the worker's sudo rule runs it: root, the configuration, an action, a job id."""
        return subprocess.run([*HELPER, str(self.config), action, job_id], capture_output=True, text=True,
                              timeout=60)

    def declaring(self, command: str, user: str | None, number: int) -> tuple[Launch, Path]:
        """A job that declares a directory laid out and marked as Galaxy's plugin leaves job
        `number`'s: the worker's, under the handover root, with an outputs/ directory and a file
        (@DECLARED@ in the command is its path)."""
        path = self.handover_root.joinpath(*galaxy_place(str(number)))
        (path / "outputs").mkdir(parents=True)
        (path / "galaxy.sh").write_text("made by the client\n")
        launch = self.job(command.replace("@DECLARED@", str(path)), user, handover_dir=path)
        mark_for_handover(path, launch.job_id)
        return launch, path

    def refusals(self) -> list[str]:
        return [line for line in self.log_file.read_text().splitlines() if "refused" in line]


def make_site(users: Users, scheduler_environment: Mapping[str, str] | None = None) -> Iterator[Site]:
    """A site under /tmp (every directory above the jobs root root's), removed afterwards."""
    base = Path(f"/tmp/gtru-{WORKER}-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o755)
    jobs_root = base / "jobs"
    jobs_root.mkdir(mode=0o711)  # a job's user reaches its own directory by name, lists none
    os.chmod(jobs_root, 0o711)
    url = f"sqlite:///{base / 'jobs.db'}"
    schema.upgrade(url)
    log_file = base / "run-as.log"
    config = base / "run-as.yml"
    handover_root = base / "client-jobs"
    handover_root.mkdir(mode=0o755)
    environment = "".join(f"  {name}: {value}\n" for name, value in (scheduler_environment or {}).items())
    config.write_text(textwrap.dedent(f"""\
        database_url: {url}
        jobs_root: {jobs_root}
        allowed_group: {users.group}
        min_uid: 1000
        log_file: {log_file}
        handover_roots: [{handover_root}]
        """) + (f"scheduler_environment:\n{environment}" if environment else ""))
    os.chmod(config, 0o600)
    store = Store(url)
    yield Site(base, jobs_root, config, log_file, store, users, handover_root)
    store.dispose()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def site(unix_users: Users) -> Iterator[Site]:
    """A deployment of the helper (a scheduler's tests make one with its environment)."""
    yield from make_site(unix_users)


@pytest.fixture
def local_as_user(site: Site) -> Iterator[tuple[LocalRunner, Reports]]:
    """A local runner whose jobs with run_as start through the site's helper, and its reports."""
    from tests.unit.test_local_runner import Reports

    reports = Reports()
    runner = LocalRunner({"kill_grace_s": 1.0, "run_as_command": site.command}, reports)
    yield runner, reports
    runner.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def handed_back(path: Path) -> bool:
    return os.stat(path).st_uid == os.getuid()


def owned_by_the_worker(path: Path) -> bool:
    """An output as docs/security.md says it comes back: the worker's, its group may read it,
    no one else."""
    info = os.stat(path)
    return (info.st_uid, info.st_gid) == (os.getuid(), os.getgid()) and info.st_mode & 0o777 == 0o640


def submit_to_running(site: Site, submit: Callable[[Launch], object], rounds: int = 3) -> dict[str, float]:
    """Median seconds of the submit call and from submit to the job's claim (running), for
    plain jobs and jobs run as alice, interleaved in one run (docs/security.md quotes them)."""
    times: dict[str, list[float]] = {"plain submit": [], "real_user submit": [], "plain running": [],
                                     "real_user running": []}
    for _ in range(rounds):
        for kind in ("plain", "real_user"):
            launch = site.job("true", site.users.alice if kind == "real_user" else None)
            started = time.monotonic()
            submit(launch)
            times[f"{kind} submit"].append(time.monotonic() - started)
            wait_for(lambda: JobDir(launch.job_dir).claimed_pid() is not None, 120, "the job's claim")
            times[f"{kind} running"].append(time.monotonic() - started)
    return {kind: sorted(values)[len(values) // 2] for kind, values in times.items()}


def print_medians(what: str, medians: Mapping[str, float]) -> None:
    print(f"\n{what}: " + ", ".join(f"{kind} {seconds * 1000:.0f} ms" for kind, seconds in medians.items()))


#: the sudoers block of docs/security.md, as it stands there
DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
_DOCS_HELPER = "/opt/galaxy-tasks-root/bin/galaxy-tasks-run-as"
_DOCS_CONFIG = "/etc/galaxy-tasks/run-as.yml"


def documented_sudoers() -> str:
    """The code block of docs/security.md that is the sudoers file of a worker named galaxy."""
    blocks = DOCS.read_text().split("```")[1::2]
    found = [block.strip("\n") for block in blocks if block.lstrip("\n").startswith("Cmnd_Alias GT_RUN_AS")]
    assert len(found) == 1, "docs/security.md has no one sudoers block"
    return found[0] + "\n"


@dataclass
class SudoWorker:
    """An unprivileged worker account whose one privilege is the sudo rule of docs/security.md."""

    name: str
    uid: int
    gid: int
    home: Path
    command: str  # a destination's run_as_command: the helper through sudo

    def own(self, path: Path) -> None:
        """`path` and everything in it the worker's, as the worker would have made it."""
        for directory, dirnames, filenames in os.walk(path):
            for name in [directory, *(os.path.join(directory, entry) for entry in dirnames + filenames)]:
                os.chown(name, self.uid, self.gid)

    def python(self, script: str, args: Mapping[str, object], env: Mapping[str, str] | None = None,
               timeout: float = 240) -> dict:
        """Run `script` as the worker with the system's Python, this checkout and its packages
        (the test's own interpreter may live where only root can reach it, a pyenv under /root);
        the JSON of its last line of output."""
        path = os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sitepackages.getsitepackages()])
        variables = [f"{name}={value}" for name, value in {"PATH": "/usr/bin:/bin", **(env or {}), "PYTHONPATH": path,
                                                           "HOME": str(self.home)}.items()]
        result = subprocess.run(["runuser", "-u", self.name, "--", "/usr/bin/env", "-i", *variables,
                                 f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", "-c", script,
                                 json.dumps(args)], capture_output=True, text=True, timeout=timeout, cwd="/")
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def sudo_worker(site: Site) -> Iterator[SudoWorker]:
    """A worker user made here, the site's jobs root its own, and the sudoers file of
    docs/security.md installed with this site's helper, configuration, alias and user."""
    tag = f"{WORKER}P{os.getpid()}"
    name = f"gtruworker{tag.lower()}"
    ensure_user(name)
    account = pwd.getpwnam(name)
    home = site.base / "worker-home"
    home.mkdir()
    os.chown(home, account.pw_uid, account.pw_gid)
    os.chown(site.jobs_root, account.pw_uid, account.pw_gid)
    helper = Path(sys.executable).with_name("galaxy-tasks-run-as")
    alias = f"GTRU_RUN_AS_{tag}"
    rules = (documented_sudoers().replace(_DOCS_HELPER, str(helper)).replace(_DOCS_CONFIG, str(site.config))
             .replace("GT_RUN_AS", alias).replace("\ngalaxy ALL=", f"\n{name} ALL="))
    sudoers = Path(f"/etc/sudoers.d/gtru-{tag}")
    sudoers.write_text(rules)
    os.chmod(sudoers, 0o440)
    try:
        subprocess.run(["visudo", "-cf", str(sudoers)], check=True, capture_output=True)
        yield SudoWorker(name, account.pw_uid, account.pw_gid, home, f"sudo -n {helper} {site.config}")
    finally:
        sudoers.unlink()
        subprocess.run(["userdel", name], capture_output=True)


#: a batch runner in a worker process that is not root: submits one job that runs as its user,
#: waits for its end (reported, or found by `status` as reconciliation finds it), and prints it
BATCH_WORKER = """
import json, os, sys, time
from pathlib import Path
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners import runner_class
from galaxy_tasks.runners.base import Launch, Tracked
args = json.loads(sys.argv[1])
ended = []
runner = runner_class(args["runner"])(args["params"], ended.append, destination=args["runner"])
job_dir = Path(args["job_dir"])
launch = Launch(job_id=args["job_id"], job_dir=job_dir, script=JobDir(job_dir).script, run_as=args["user"])
external_id = runner.submit(launch)
deadline = time.monotonic() + 150
while not ended and time.monotonic() < deadline:
    time.sleep(1)
    if args["ends"] == "status":
        done = runner.status([Tracked(launch.job_id, external_id, job_dir)])[launch.job_id]
        if done is not None:
            ended.append(done)
runner.close()
print(json.dumps({"external_id": external_id, "exit_code": ended[0].exit_code if ended else None,
                  "reason": ended[0].reason if ended else None}))
"""


def batch_job_through_sudo(site: Site, worker: SudoWorker, runner: str, params: Mapping[str, object], *,
                           ends: str, env: Mapping[str, str]) -> None:
    """A job of alice submitted by a worker that is not root, through the documented sudo rule:
    it runs as alice, and its directory and outputs come back to the worker at its end."""
    launch = site.job("id -un > who.txt; echo made > out.txt", site.users.alice)
    worker.own(launch.job_dir)
    seen = worker.python(BATCH_WORKER, {"runner": runner, "params": {**params, "run_as_command": worker.command},
                                        "job_id": launch.job_id, "job_dir": str(launch.job_dir),
                                        "user": site.users.alice, "ends": ends}, env)
    assert seen["exit_code"] == 0, (seen, site.refusals())
    working = JobDir(launch.job_dir).working
    assert (working / "who.txt").read_text().strip() == site.users.alice
    assert os.stat(launch.job_dir).st_uid == worker.uid  # handed back to the worker
    out = os.stat(working / "out.txt")
    assert (out.st_uid, out.st_gid, out.st_mode & 0o777) == (worker.uid, worker.gid, 0o640)
    log = site.log_file.read_text()
    for action in {"slurm": ("sbatch", "reclaim"), "drmaa": ("qsub", "reclaim")}[runner]:
        assert f"event=real_user_action action={action} job_id={launch.job_id} user={site.users.alice} " \
               f"caller={worker.name}" in log, log
