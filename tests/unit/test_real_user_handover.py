"""A job run as its real user is given the directory its client declared (Galaxy's job
directory, `handover_dir`) with its own, and both come back before its end is reported; the
privileged helper refuses a declared directory that is not that job's own under its
`handover_roots`. Real users, the helper run as root as sudo would run it (`-k real_user`)."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import text

from galaxy_tasks.errors import SpecError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.realuser.handover import galaxy_place
from galaxy_tasks.realuser.helper import REFUSED
from galaxy_tasks.runas import HANDOVER_MARK, mark_for_handover
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState
from tests.support.real_user import Site, needs_root, wait_for


def owners(path: Path) -> set[int]:
    """The owners of a directory and of everything in it."""
    found = {os.lstat(path).st_uid}
    for directory, names, files in os.walk(path):
        found |= {os.lstat(os.path.join(directory, name)).st_uid for name in names + files}
    return found


@pytest.mark.parametrize("number", ["7", "999", "1000", "90000", "123456", "777777777"])
def test_real_user_handover_place_is_galaxys_job_directory(number):
    """Galaxy's own `directory_hash_id` (its doctests: 90000 -> 090, 777777777 -> 000/777/777)."""
    expected = {"7": ["000"], "999": ["000"], "1000": ["001"], "90000": ["090"], "123456": ["000", "123"],
                "777777777": ["000", "777", "777"]}[number]
    assert galaxy_place(number) == [*expected, number]


def test_real_user_handover_dir_is_an_absolute_normalised_path():
    base = {"tool_id": "t", "command": "true", "run_as": "alice", "handover_dir": "/srv/jobs/000/1"}
    assert parse(base).handover_dir == "/srv/jobs/000/1"
    for wrong in ("srv/jobs/000/1", "/srv/jobs/../000/1", "/srv/jobs/000/1/"):
        with pytest.raises(SpecError, match="handover_dir"):
            parse({**base, "handover_dir": wrong})


@needs_root
def test_real_user_declared_directory_is_the_users_while_it_runs_and_back_before_the_end(site, local_as_user):
    local, reports = local_as_user
    users = site.users
    launch, declared = site.declaring(
        "until [ -e go ]; do sleep 0.05; done; id -un > @DECLARED@/outputs/who.txt; "
        # enough files that the keeper's hand-back takes a while after the job's exit
        "mkdir @DECLARED@/many && cd @DECLARED@/many && seq 3000 | xargs touch", users.alice, 42)
    local.submit(launch)
    alice = pwd.getpwnam(users.alice).pw_uid
    wait_for(lambda: os.lstat(declared).st_uid == alice, 30, "the declared directory handed over")
    info = os.lstat(declared)
    assert stat.S_IMODE(info.st_mode) & 0o007 == 0 and info.st_mode & stat.S_ISGID  # no one else's
    assert os.lstat(declared / HANDOVER_MARK).st_uid == os.getuid()  # the mark stays the worker's
    bob = subprocess.run(["runuser", "-u", users.bob, "--", "ls", str(declared)], capture_output=True, text=True)
    assert bob.returncode != 0 and "Permission denied" in bob.stderr, bob
    (JobDir(launch.job_dir).working / "go").touch()
    completion = reports.wait_for(launch.job_id)
    # reported only once every entry of both directories is the worker's again
    assert owners(declared) == {os.getuid()} and owners(launch.job_dir) == {os.getuid()}, completion
    assert completion.exit_code == 0, (completion, site.refusals())
    assert (declared / "outputs" / "who.txt").read_text().strip() == users.alice
    assert f"event=real_user_reclaimed job_id={launch.job_id}" in site.log_file.read_text()


def _no_roots(site: Site) -> Path:
    config = site.config.read_text()
    site.config.write_text(re.sub(r"handover_roots:.*\n", "", config))
    return site.declaring("true", site.users.alice, 1)[1]


def _outside(site: Site) -> Path:
    launch, declared = site.declaring("true", site.users.alice, 2)
    elsewhere = site.base / "elsewhere" / "000" / "2"
    shutil.copytree(declared, elsewhere)
    site.store.move(launch.job_id, _submitting(), sources=frozenset({_submitting()}), handover_dir=str(elsewhere))
    return elsewhere


def _moved(place: str) -> Callable[[Site], Path]:
    def make(site: Site) -> Path:
        launch, declared = site.declaring("true", site.users.alice, 3)
        moved = site.handover_root / place
        moved.parent.mkdir(parents=True, exist_ok=True)
        os.rename(declared, moved)
        site.store.move(launch.job_id, _submitting(), sources=frozenset({_submitting()}), handover_dir=str(moved))
        return moved
    return make


def _symlink_on_the_way(site: Site) -> Path:
    launch, declared = site.declaring("true", site.users.alice, 4)
    real = site.base / "elsewhere-000"
    os.rename(declared.parent, real)
    declared.parent.symlink_to(real)
    return declared


def _owned_by(user: str) -> Callable[[Site], Path]:
    def make(site: Site) -> Path:
        declared = site.declaring("true", site.users.alice, 5)[1]
        shutil.chown(declared, getattr(site.users, user))
        return declared
    return make


def _unmarked(site: Site) -> Path:
    declared = site.declaring("true", site.users.alice, 6)[1]
    (declared / HANDOVER_MARK).unlink()
    return declared


def _marked_for_another(site: Site) -> Path:
    declared = site.declaring("true", site.users.alice, 7)[1]
    mark_for_handover(declared, "another-job")
    return declared


def _writable_on_the_way(site: Site) -> Path:
    declared = site.declaring("true", site.users.alice, 8)[1]
    os.chmod(declared.parent, 0o777)
    return declared


def _submitting() -> JobState:
    return JobState.SUBMITTING


DECLARED_REFUSALS = {
    # what is declared: (how to make it, what the refusal says)
    "no_handover_roots_configured": (_no_roots, "names no handover_roots"),
    "outside_the_handover_roots": (_outside, "is under none of the handover_roots"),
    "not_at_galaxys_depth": (_moved("3"), "is not where Galaxy puts a job directory"),
    "another_number_s_place": (_moved("001/3"), "is not where Galaxy puts a job directory"),
    "symlink_on_the_way": (_symlink_on_the_way, "is a symlink"),
    "owned_by_another_user": (_owned_by("bob"), "neither the worker's nor"),
    "without_the_jobs_mark": (_unmarked, "holds no mark"),
    "marked_for_another_job": (_marked_for_another, "is marked for another job"),
    "writable_by_others_on_the_way": (_writable_on_the_way, "is not the worker's alone"),
}


@needs_root
@pytest.mark.parametrize("case", sorted(DECLARED_REFUSALS))
def test_real_user_helper_refuses_a_declared_directory(site, case):
    make, says = DECLARED_REFUSALS[case]
    declared = make(site)
    job_id = _job_of(site, declared)
    before = {path: os.lstat(path) for path in (declared, site.jobs_root / job_id)}
    result = site.helper("start", job_id)
    assert result.returncode == REFUSED, (result.returncode, result.stderr)
    assert "event=real_user_refused" in result.stderr and says in result.stderr, result.stderr
    assert f"event=real_user_refused action=start job_id={job_id}" in site.log_file.read_text()
    for path, info in before.items():  # nothing handed over, nothing run
        after = os.lstat(path)
        assert (after.st_uid, after.st_mode) == (info.st_uid, info.st_mode), path
    assert not JobDir(site.jobs_root / job_id).claimed()


def _job_of(site: Site, declared: Path) -> str:
    with site.store.engine.connect() as connection:
        return connection.execute(text("SELECT id FROM gt_job WHERE handover_dir = :d"), {"d": str(declared)}).scalar_one()


@needs_root
def test_real_user_local_job_refused_by_the_helper_ends_with_its_reason(site, local_as_user):
    local, reports = local_as_user
    launch = site.job("touch ran", "root")
    local.submit(launch)
    completion = reports.wait_for(launch.job_id)
    assert completion.exit_code == REFUSED
    assert completion.reason is not None and completion.reason.startswith(
        "the privileged helper refused to start the job: job ") and "would run as root" in completion.reason, completion
