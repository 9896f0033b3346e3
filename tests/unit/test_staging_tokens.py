"""The http staging transfer's tokens: a far worker holds one job's two tokens and no secret,
so a token must grant one direction of one job's directory, until it expires, and nothing
else."""
from __future__ import annotations

import time

import pytest

from galaxy_tasks.errors import ConfigError
from galaxy_tasks.model import Job
from galaxy_tasks.staging import tokens
from galaxy_tasks.staging.server import Jobs, Refused, relative

SECRET = "s" * 40
KEY = tokens.key(SECRET)


class Rows:
    """The rows the server reads (the store's `job`), for two jobs."""

    def __init__(self, *jobs: Job) -> None:
        self.rows = {job.id: job for job in jobs}

    def job(self, job_id: str) -> Job | None:
        return self.rows.get(job_id)


def _job(job_id: str, token: str) -> Job:
    return Job(id=job_id, tool_id="t", command="true", destination="far", queue="far", state="running",
               job_dir=f"/jobs/{job_id}", token=token, inputs=[f"/data/{job_id}.txt"])


def test_staging_token_grants_its_job_and_direction():
    minted = tokens.parse(tokens.for_job(SECRET, "job-a", "dir-a", 60, 600))
    assert tokens.check(KEY, minted["in"], "in") == tokens.Claim("job-a", "dir-a", "in")
    assert tokens.check(KEY, minted["out"], "out") == tokens.Claim("job-a", "dir-a", "out")


def test_staging_token_forged_is_refused():
    token = tokens.mint(KEY, "job-a", "dir-a", "in", 60)
    version, body, mac = token.split(".")
    other = tokens.mint(KEY, "job-b", "dir-b", "in", 60).split(".")[1]
    with pytest.raises(tokens.TokenRefused, match="signature does not match"):
        tokens.check(KEY, f"{version}.{other}.{mac}", "in")  # another job's claims, this one's signature
    with pytest.raises(tokens.TokenRefused, match="signature does not match"):
        tokens.check(tokens.key("t" * 40), token, "in")  # signed with another secret
    with pytest.raises(tokens.TokenRefused, match="not a staging token"):
        tokens.check(KEY, "Bearer nonsense", "in")


def test_staging_token_expired_is_refused_naming_its_setting():
    token = tokens.mint(KEY, "job-a", "dir-a", "out", 60, now=time.time() - 120)
    with pytest.raises(tokens.TokenRefused, match="expired.*GALAXY_TASKS_STAGING_TOKEN_TTL_OUT"):
        tokens.check(KEY, token, "out")


def test_staging_token_of_the_other_direction_is_refused():
    minted = tokens.parse(tokens.for_job(SECRET, "job-a", "dir-a", 60, 60))
    with pytest.raises(tokens.TokenRefused, match="for 'in', not 'out'"):
        tokens.check(KEY, minted["in"], "out")
    with pytest.raises(tokens.TokenRefused, match="for 'out', not 'in'"):
        tokens.check(KEY, minted["out"], "in")


def test_staging_token_of_another_job_is_refused_by_the_server():
    """Job A's token opens nothing of job B's, nor of a later job with A's id."""
    jobs = Jobs(Rows(_job("job-a", "dir-a"), _job("job-b", "dir-b")).job, KEY)
    token = tokens.mint(KEY, "job-a", "dir-a", "in", 60)
    assert jobs.job("job-a", f"Bearer {token}", "in").id == "job-a"
    with pytest.raises(Refused, match="another job's"):
        jobs.job("job-b", f"Bearer {token}", "in")
    stale = tokens.mint(KEY, "job-a", "an-earlier-dir", "in", 60)
    with pytest.raises(Refused, match="not this job"):
        jobs.job("job-a", f"Bearer {stale}", "in")
    with pytest.raises(Refused, match="a staging token is needed"):
        jobs.job("job-a", None, "in")


def test_staging_secret_too_short_is_a_configuration_error():
    with pytest.raises(ConfigError, match="GALAXY_TASKS_STAGING_SECRET must be at least 32 bytes"):
        tokens.for_job("short", "job-a", "dir-a", 60, 60)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "working/../../x", "a//b", "./a", "a/\0"])
def test_staging_server_refuses_paths_outside_the_job_directory(path):
    with pytest.raises(Refused):
        relative(path)
