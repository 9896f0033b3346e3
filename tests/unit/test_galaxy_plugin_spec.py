"""The Galaxy plugin's Galaxy-free parts: what galaxy-tasks is asked to run for a Galaxy
job, the runner settings, and which messages count as job events."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from galaxy_tasks import spec as task_spec
from galaxy_tasks.galaxy import events, settings
from galaxy_tasks.galaxy.spec import (
    GalaxyJob,
    MappingError,
    command,
    galaxy_job_id,
    resources,
    task_job_id,
    to_spec,
    walltime_seconds,
)


def job(**overrides) -> GalaxyJob:
    values = dict(server_name="main", job_id=42, tool_id="toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa/0.7.17",
                  tool_version="0.7.17.5", user="ada@example.org", job_file="/g/jobs/000/42/galaxy_42.sh",
                  stdout_file="/g/jobs/000/42/galaxy_42.o", stderr_file="/g/jobs/000/42/galaxy_42.e",
                  exit_code_file="/g/jobs/000/42/galaxy_42.ec")
    values.update(overrides)
    return GalaxyJob(**values)


def test_the_package_imports_without_galaxy() -> None:
    code = ("import sys, galaxy_tasks.galaxy, galaxy_tasks.galaxy.spec, galaxy_tasks.galaxy.events, "
            "galaxy_tasks.galaxy.client, galaxy_tasks.galaxy.settings; "
            "sys.exit('galaxy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_galaxy_job_becomes_a_spec_galaxy_tasks_accepts() -> None:
    spec = to_spec(job(params={"galaxy_tasks_destination": "sge_big", "cores": 4, "mem": 7.5,
                               "walltime": "02:00:00"}), environment={"LC_ALL": "C"})
    parsed = task_spec.parse(spec)
    assert parsed.id == "g-main-42"
    assert (parsed.cores, parsed.memory_mb, parsed.walltime_s) == (4, 7680, 7200)
    assert parsed.destination == "sge_big" and parsed.environment == {"LC_ALL": "C"}
    assert parsed.tool_id.endswith("/bwa/0.7.17") and parsed.user == "ada@example.org"


def test_without_a_destination_param_galaxy_tasks_routing_decides() -> None:
    assert "destination" not in to_spec(job())


def test_events_are_asked_for_only_when_configured() -> None:
    assert "events" not in to_spec(job())
    assert to_spec(job(), events_queue="galaxy.main")["events"] == {"queue": "galaxy.main", "client_id": "main"}


@pytest.mark.parametrize("tool_code, script_code, recorded", [(3, 0, 3), (0, 0, 0), (None, 143, 143)])
def test_the_command_runs_the_job_script_and_exits_with_the_tools_code(tmp_path, tool_code, script_code,
                                                                        recorded) -> None:
    """Galaxy's job script ends with its metrics line (status 0) after writing the tool's
    code to the exit code file; a script killed before that leaves no file."""
    ec = tmp_path / "galaxy_7.ec"
    write = f"echo {tool_code} > '{ec}'; " if tool_code is not None else ""
    script = tmp_path / "galaxy 7.sh"
    script.write_text(f"#!/bin/sh\necho out; echo err >&2; {write}exit {script_code}\n")
    script.chmod(0o755)
    out, err = tmp_path / "galaxy_7.o", tmp_path / "it's.e"
    line = command(job(job_file=str(script), stdout_file=str(out), stderr_file=str(err), exit_code_file=str(ec)))
    assert subprocess.run(["/bin/sh", "-c", line]).returncode == recorded
    assert (out.read_text(), err.read_text()) == ("out\n", "err\n")
    assert shlex.split(line)[0] == str(script)


def test_ids_are_stable_per_attempt_and_read_back() -> None:
    assert task_job_id("main", 42) == task_job_id("main", 42) == "g-main-42"
    assert task_job_id("main", 42, attempt=2) == "g-main-42-r2"
    assert galaxy_job_id("g-main-42-r2", "main") == 42
    assert galaxy_job_id("g-main-42", "other") is None
    assert galaxy_job_id("someone-else", "main") is None
    odd = "handler.example.org:web:1 with a name far too long for an id"
    made = task_job_id(odd, 123456789)
    assert task_spec.JOB_ID.match(made) and galaxy_job_id(made, odd) == 123456789
    assert task_job_id("main-1", 5) == "g-main-1-5" and galaxy_job_id("g-main-1-5", "main-1") == 5


def test_resources_come_from_params_then_from_the_destination_env() -> None:
    env = ({"name": "GALAXY_SLOTS", "value": "8"}, {"name": "GALAXY_MEMORY_MB", "value": "16000"})
    assert resources({}, env) == resources({"local_slots": 8}, env[1:])
    assert resources({"cores": "2"}, env).cores == 2
    assert resources({}, env).memory_mb == 16000
    assert resources({}) == resources({"cores": ""})
    assert resources({}).cores == 1


@pytest.mark.parametrize("text, seconds", [("90", 90), ("10:00", 600), ("04:00:00", 14400),
                                           ("1-12:00:00", 129600), (3600, 3600)])
def test_walltimes_in_drm_forms(text, seconds) -> None:
    assert walltime_seconds(text) == seconds


@pytest.mark.parametrize("params", [{"cores": "two"}, {"cores": 0}, {"cores": 1.5}, {"mem": -1},
                                    {"walltime": "soon"}, {"walltime": "1:2:3:4"}])
def test_a_bad_param_is_named(params) -> None:
    with pytest.raises(MappingError, match=next(iter(params))):
        resources(params)


def test_settings_refuse_unknown_keys_and_need_a_broker() -> None:
    with pytest.raises(settings.SettingsError, match="brokr_url"):
        settings.from_kwargs({"brokr_url": "redis://x"}, "main")
    with pytest.raises(settings.SettingsError, match="broker_url"):
        settings.from_kwargs({}, "main")
    with pytest.raises(settings.SettingsError, match="signing"):
        settings.from_kwargs({"broker_url": "redis://x", "signing_key": "/k.pem"}, "main")


def test_settings_defaults_and_a_masked_password() -> None:
    made = settings.from_kwargs({"broker_url": "redis://:s3cret@host:6379/0", "events": "true"}, "main")
    assert (made.steps_queue, made.events_queue, made.events) == ("galaxy_tasks", "galaxy.main", True)
    assert "s3cret" not in made.safe_broker_url


def event_body(**overrides) -> dict:
    body = {"event": "job_state", "version": 1, "job_id": "g-main-42", "client_id": "main", "state": "ok",
            "seq": 5, "exit_code": 0, "signal": None, "reason": None, "runner_state": None,
            "external_id": "vm:123", "destination": "local", "times": {"created_at": "2026-01-01T00:00:00"}}
    body.update(overrides)
    return body


def test_a_job_event_is_parsed() -> None:
    parsed = events.parse(event_body())
    assert (parsed.job_id, parsed.state, parsed.seq, parsed.exit_code, parsed.terminal) == ("g-main-42", "ok", 5, 0, True)
    assert not events.parse(event_body(state="running")).terminal
    assert events.parse(event_body(state="error", runner_state="walltime_reached")).runner_state == "walltime_reached"


@pytest.mark.parametrize("body", [[], {"event": "other"}, event_body(version=2), event_body(job_id=""),
                                  event_body(state="exploded"), event_body(seq="4"), event_body(seq=True),
                                  event_body(runner_state="Tired\n"), event_body(runner_state=3), event_body(exit_code="0")])
def test_anything_else_is_refused(body) -> None:
    with pytest.raises(events.EventError):
        events.parse(body)


def test_the_job_conf_of_docs_galaxy_md_is_what_the_plugin_accepts() -> None:
    """Galaxy's job_conf in the admin's page: the plugin's runner keys are known, each
    galaxy-tasks environment's params map to a spec, and a resubmit rule names an environment
    that exists."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "galaxy.md").read_text()
    confs = [yaml.safe_load(body) for body in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    [conf] = [c for c in confs if "runners" in c]
    runner = {k: v for k, v in conf["runners"]["gt"].items() if k not in ("load", "workers")}
    assert conf["runners"]["gt"]["load"] == "galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner"
    made = settings.from_kwargs(runner, "main")
    environments = conf["execution"]["environments"]
    assert conf["execution"]["default"] in environments
    for name, environment in environments.items():
        for rule in environment.get("resubmit", ()):
            assert rule["environment"] in environments, name
        if environment["runner"] == "gt":
            params = {k: v for k, v in environment.items() if k not in ("runner", "resubmit")}
            task_spec.parse(to_spec(job(params=params), environment=made.environment, events_queue=made.events_queue))
