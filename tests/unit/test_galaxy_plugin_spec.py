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
from galaxy_tasks.galaxy import events, settings, states, stats
from galaxy_tasks.galaxy.spec import (
    GalaxyJob,
    GalaxyLimits,
    MappingError,
    command,
    galaxy_job_id,
    real_system_user,
    resources,
    task_job_id,
    to_spec,
    tool_files,
    walltime,
    walltime_seconds,
)
from galaxy_tasks.names import JOB_ID


def job(**overrides) -> GalaxyJob:
    values = dict(server_name="main", job_id=42, tool_id="toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa/0.7.17",
                  tool_version="0.7.17.5", user="ada@example.org", job_file="/g/jobs/000/42/galaxy_42.sh",
                  stdout_file="/g/jobs/000/42/galaxy_42.o", stderr_file="/g/jobs/000/42/galaxy_42.e",
                  exit_code_file="/g/jobs/000/42/galaxy_42.ec")
    values.update(overrides)
    return GalaxyJob(**values)


def test_the_package_imports_without_galaxy() -> None:
    code = ("import sys, galaxy_tasks.galaxy, galaxy_tasks.galaxy.spec, galaxy_tasks.galaxy.events, "
            "galaxy_tasks.galaxy.client, galaxy_tasks.galaxy.settings, galaxy_tasks.galaxy.entry_points; "
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
    assert galaxy_job_id("g-main-42-r2") == 42
    assert galaxy_job_id("g-handler1-42") == 42, "any handler of the Galaxy reads another's (or a renamed one's) id"
    assert galaxy_job_id("someone-else") is None and galaxy_job_id("g-main-x") is None
    odd = "handler.example.org:web:1 with a name far too long for an id"
    made = task_job_id(odd, 123456789)
    assert JOB_ID.match(made) and galaxy_job_id(made) == 123456789
    assert task_job_id("main-1", 5) == "g-main-1-5" and galaxy_job_id("g-main-1-5") == 5


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


def test_tpv_params_become_the_jobs_resources_gpus_and_own_scheduler_options() -> None:
    # what a TPV destination's templated params give (docs/galaxy.md#tpv): strings, mem in GB
    spec = task_spec.parse(to_spec(job(params={"cores": "4", "mem": "15.2", "gpus": "2",
                                               "native_specification": " --partition=gpu --comment=tpv "})))
    assert (spec.cores, spec.memory_mb, spec.gpus) == (4, 15565, 2)
    assert spec.native_specification == "--partition=gpu --comment=tpv"
    none = to_spec(job(params={"gpus": "0", "native_specification": ""}))
    assert "gpus" not in none and "native_specification" not in none
    assert to_spec(job(params={"galaxy_tasks_gpus": 1}))["gpus"] == 1


def test_galaxys_own_limits_bound_the_walltime_and_are_reported_in_its_words() -> None:
    """Galaxy's runners report its global walltime as global_walltime_reached and a tool's
    <resource type="timelimit"> as tool_timelimit_reached; the least limit is the one kept."""
    limits = GalaxyLimits(walltime_s=3600, output_size_bytes=10**11, tool_timelimit_s=600)
    assert walltime(job(params={"walltime": 60}, limits=limits)) == (60, "walltime_reached")
    assert walltime(job(limits=limits)) == (600, "tool_timelimit_reached")
    assert walltime(job(limits=GalaxyLimits(walltime_s=3600))) == (3600, "global_walltime_reached")
    assert walltime(job()) == (None, "walltime_reached")
    spec = task_spec.parse(to_spec(job(params={"walltime": "02:00:00"}, limits=limits)))
    assert (spec.walltime_s, spec.output_size_bytes) == (600, 10**11)
    assert states.galaxy_runner_state("tool_timelimit_reached", type("S", (), {"TOOL_TIMELIMIT_REACHED": "t"})) == "t"
    assert "time limit" in states.fail_message("tool_timelimit_reached", "walltime 600 s reached")


@pytest.mark.parametrize("params", [{"cores": "two"}, {"cores": 0}, {"cores": 1.5}, {"mem": -1},
                                    {"walltime": "soon"}, {"walltime": "1:2:3:4"}, {"gpus": "None"},
                                    {"gpus": -1}])
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
                                  event_body(runner_state="Tired\n"), event_body(runner_state=3), event_body(exit_code="0"),
                                  event_body(seq=0), event_body(state="running", seq=0), event_body(refused="yes")])
def test_anything_else_is_refused(body) -> None:
    with pytest.raises(events.EventError):
        events.parse(body)


def test_an_end_carries_galaxy_tasks_measures_for_galaxys_job_metrics() -> None:
    times = {"running_at": "2026-01-01T00:00:01+00:00", "ended_at": "2026-01-01T00:00:03.5+00:00"}
    parsed = events.parse(event_body(times=times, max_rss_kb=2048))
    assert (parsed.run_seconds, parsed.max_rss_kb) == (2.5, 2048)
    assert events.parse(event_body(times={"running_at": "yesterday", "ended_at": None})).run_seconds is None
    with pytest.raises(events.EventError):
        events.parse(event_body(max_rss_kb="2 GB"))


def test_every_handler_of_one_galaxy_shares_its_instance_name_ids_and_events_queue() -> None:
    handlers = [settings.from_kwargs({"broker_url": "redis://h/0", "instance": "site_a"}, name)
                for name in ("handler0", "handler1")]
    assert {(h.server_name, h.events_queue) for h in handlers} == {("site_a", "galaxy.site_a")}
    assert task_job_id(handlers[1].server_name, 7) == "g-site_a-7"
    assert settings.from_kwargs({"broker_url": "redis://h/0"}, "main").events_queue == "galaxy.main"


def test_a_handler_started_again_shows_its_own_counters_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "gt-stats-handler0.json"
    stats.Stats(str(path)).bump("finished", 5)
    assert stats.read(path) == {"finished": 5}
    stats.Stats(str(path))  # the same handler name, a new process that has counted nothing yet
    assert stats.read(path) == {}


def test_each_handler_writes_its_counters_to_its_own_stats_file() -> None:
    runner = {"broker_url": "redis://h/0", "instance": "site_a", "stats_file": "/var/gt-{server_name}.json"}
    assert [settings.from_kwargs(runner, name).stats_file for name in ("handler0", "handler1")] == \
        ["/var/gt-handler0.json", "/var/gt-handler1.json"]
    assert settings.from_kwargs({**runner, "stats_file": "/var/gt.json"}, "handler0").stats_file == "/var/gt.json"


def test_a_refusal_is_an_error_event_with_its_reason_and_only_unknown_has_no_seq() -> None:
    from galaxy_tasks.events import refused_event, unknown_event

    refused = events.parse(refused_event("g-main-9", "main", "destination: unknown destination 'x'"))
    assert (refused.state, refused.seq, refused.refused, refused.terminal) == ("error", 1, True, True)
    assert states.fail_message(None, refused.reason, refused.refused) == \
        "galaxy-tasks refused this job: destination: unknown destination 'x'"
    assert events.parse(unknown_event("g-main-9")).seq == 0
    assert not events.parse(event_body()).refused


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


@pytest.mark.parametrize(("setting", "expected"), [
    ("user_email", "alice"),  # Galaxy's default: the email's local part
    ("username", "alice-lab"),  # the Galaxy username (LDAP sites)
    ("galaxy_worker", "galaxy_worker"),  # one common system user for every job
])
def test_real_user_from_galaxys_real_system_username(setting, expected) -> None:
    assert real_system_user(setting, "alice@example.org", "alice-lab") == expected
    made = to_spec(job(run_as=real_system_user(setting, "alice@example.org", "alice-lab")))
    assert task_spec.parse(made).run_as == expected


def test_real_user_a_site_mapping_comes_first_and_a_bad_name_is_named() -> None:
    site = {"alice@example.org": "asmith", "bob-lab": "bjones"}
    assert real_system_user("user_email", "alice@example.org", "alice-lab", site) == "asmith"
    assert real_system_user("user_email", "bob@example.org", "bob-lab", site) == "bjones"
    assert real_system_user("user_email", "carol@example.org", "carol", site) == "carol"
    with pytest.raises(MappingError, match="'Ada.Lovelace', which is not a Unix user name"):
        real_system_user("user_email", "Ada.Lovelace@example.org", None)
    with pytest.raises(MappingError, match="an anonymous user"):
        real_system_user("user_email", None, None)
    assert "run_as" not in to_spec(job())  # a runner not set to run jobs as their user asks for none


def test_real_user_job_declares_galaxys_job_directory_to_hand_over() -> None:
    made = task_spec.parse(to_spec(job(run_as="alice", handover_dir="/srv/galaxy/jobs/000/7")))
    assert (made.run_as, made.handover_dir) == ("alice", "/srv/galaxy/jobs/000/7")
    assert "handover_dir" not in to_spec(job(handover_dir="/srv/galaxy/jobs/000/7"))  # nobody to hand it to


def test_real_user_settings_are_off_by_default_and_a_bad_map_is_refused() -> None:
    made = settings.from_kwargs({"broker_url": "redis://x"}, "main")
    assert (made.run_as_real_user, made.real_user_map) == (False, {})
    made = settings.from_kwargs({"broker_url": "redis://x", "run_as_real_user": "true",
                                 "real_user_map": {"alice@example.org": "asmith"}}, "main")
    assert (made.run_as_real_user, made.real_user_map) == (True, {"alice@example.org": "asmith"})
    with pytest.raises(settings.SettingsError, match="real_user_map: 'eve@example.org' maps to 'root; rm'"):
        settings.from_kwargs({"broker_url": "redis://x", "real_user_map": {"eve@example.org": "root; rm"}}, "main")


def staged_job(**overrides) -> GalaxyJob:
    values = dict(working_directory="/g/jobs/000/42", input_files=("/g/objects/in.dat", "/g/objects/in_files"),
                  output_files=("/g/objects/out.dat", "/g/objects/out_files"), tool_files=("/tools/bwa",),
                  config_files=("/g/jobs/000/42/tool_script.sh", "/g/jobs/000/42/configs"))
    return job(**{**values, **overrides})


def test_staging_a_galaxy_job_declares_its_files_for_a_destination_without_a_shared_filesystem():
    spec = to_spec(staged_job())
    assert spec["inputs"] == ["/g/jobs/000/42", "/g/objects/in.dat", "/g/objects/in_files", "/tools/bwa"]
    assert spec["returns"] == ["/g/jobs/000/42", "/g/objects/out.dat", "/g/objects/out_files"]
    assert spec["rewrite"] == ["/g/jobs/000/42/galaxy_42.sh", "/g/jobs/000/42/tool_script.sh",
                               "/g/jobs/000/42/configs"]
    parsed = task_spec.parse(spec)  # galaxy-tasks takes them
    assert (parsed.inputs, parsed.returns, parsed.rewrite) == (spec["inputs"], spec["returns"], spec["rewrite"])


def test_staging_galaxy_files_past_the_specs_bounds_are_not_declared():
    many = tuple(f"/g/objects/{n}.dat" for n in range(task_spec.MAX_PATHS))
    spec = to_spec(staged_job(input_files=many))
    assert not {"inputs", "returns", "rewrite"} & spec.keys()
    task_spec.parse(spec)  # the job still runs where the files are shared


@pytest.mark.parametrize("required, texts, found", [
    (["scripts/run.py", "data/../ref.txt"], [], ["/tools/bwa/scripts/run.py", "/tools/bwa/ref.txt"]),
    ([], ["python /tools/bwa/run.py"], []),  # required_files that name none: none
    (None, ["python /tools/bwa/run.py"], ["/tools/bwa"]),
    (None, ["cat /data/in.txt"], []),
])
def test_staging_tool_files_are_the_required_ones_or_the_directory_the_scripts_name(required, texts, found):
    assert tool_files("/tools/bwa", required, texts) == found
