"""The published JSON Schemas (docs/schemas.md) and the code that checks the same documents
agree: every example spec, event and job_conf in the repository is accepted by both, the
known-bad ones are refused by both, whatever the spec parser accepts the schema accepts too,
and the files in docs/schemas/ are what the models generate now."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from jsonschema import Draft202012Validator

from galaxy_tasks import events, routing, schemas
from galaxy_tasks.cli import main
from galaxy_tasks.errors import ConfigError, SpecError
from galaxy_tasks.model import Job
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState
from tests.unit.test_routing import JOB_CONF as TEST_JOB_CONF
from tests.unit.test_spec import FULL, MINIMAL
from tests.unit.test_spec_fuzz import near_valid_specs, valid_specs

ROOT = Path(__file__).resolve().parents[2]
VALIDATORS = {name: Draft202012Validator(schemas.schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)
              for name in schemas.MODELS}


def valid(name: str, document: object) -> bool:
    return VALIDATORS[name].is_valid(document)


def why_not(name: str, document: object) -> str:
    return "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in VALIDATORS[name].iter_errors(document))


# -- the examples in the repository ------------------------------------------------------------


def snippets() -> list[tuple[str, str, object]]:
    """(where, kind, document) of every complete spec, event and job_conf in the docs'
    YAML and JSON blocks, the README and examples/ and ops/compose/."""
    found: list[tuple[str, str, object]] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, (lang, body) in enumerate(re.findall(r"```(yaml|yml|json)\n(.*?)```", path.read_text(), re.S)):
            data = json.loads(body) if lang == "json" else yaml.safe_load(body)
            found += classify(f"{path.name} block {number}", data)
    for path in [*sorted((ROOT / "examples").glob("*.yml")), ROOT / "ops" / "compose" / "job_conf.yml"]:
        found += classify(str(path.relative_to(ROOT)), yaml.safe_load(path.read_text()))
    return found


def classify(where: str, data: object) -> list[tuple[str, str, object]]:
    if not isinstance(data, dict):
        return []
    if "destinations" in data and not {"global", "tools"} & set(data):  # TPV's config has destinations too
        return [(where, "job-conf", data)]
    if data.get("event") == "job_state":
        return [(where, "event", data)]
    if "tool_id" in data and "command" in data:
        return [(where, "spec", data)]
    if isinstance(data.get("jobs"), list):
        return [(f"{where} jobs[{i}]", "spec", job) for i, job in enumerate(data["jobs"])]
    return []  # not one of ours (Prometheus' scrape config, say)


EXAMPLES = snippets()


def test_the_repository_has_examples_of_each_kind():
    kinds = {kind for _, kind, _ in EXAMPLES}
    assert kinds == {"spec", "event", "job-conf"}, EXAMPLES
    places = {where.split(" ")[0] for where, _, _ in EXAMPLES}
    assert {"examples/job_conf.yml", "examples/jobs.yml", "ops/compose/job_conf.yml", "configuration.md",
            "events.md", "schemas.md"} <= places


@pytest.mark.parametrize("where, kind, document", EXAMPLES, ids=[f"{w} ({k})" for w, k, _ in EXAMPLES])
def test_every_example_is_accepted_by_the_schema_and_the_code(where, kind, document):
    assert valid(kind, document), why_not(kind, document)
    if kind == "spec":
        parse(document)
    elif kind == "job-conf":
        routing.parse(document, where)
    else:
        events.EventModel.model_validate(document)


@pytest.mark.parametrize("document", [MINIMAL, FULL, yaml.safe_load(TEST_JOB_CONF)], ids=["minimal", "full", "conf"])
def test_the_tests_own_examples_too(document):
    kind = "job-conf" if "destinations" in document else "spec"
    assert valid(kind, document), why_not(kind, document)


# -- specs ------------------------------------------------------------------------------------

M = {"tool_id": "cat1", "command": "true"}

BAD_SPECS = [
    ("not an object", ["cat1"], "spec"),
    ("no tool_id", {"command": "true"}, "tool_id"),
    ("no command", {"tool_id": "t"}, "command"),
    ("blank command", {**M, "command": "  \n"}, "command"),
    ("tool_id not text", {**M, "tool_id": 7}, "tool_id"),
    ("tool_id too long", {**M, "tool_id": "t" * 256}, "tool_id"),
    ("NUL in command", {**M, "command": "echo \x00"}, "command"),
    ("unknown field", {**M, "cpus": 4}, "cpus"),
    ("cores 0", {**M, "cores": 0}, "cores"),
    ("cores a string", {**M, "cores": "4"}, "cores"),
    ("cores a float", {**M, "cores": 2.5}, "cores"),
    ("cores true", {**M, "cores": True}, "cores"),
    ("memory too large", {**M, "memory_mb": 2**31}, "memory_mb"),
    ("environment a list", {**M, "environment": ["A=b"]}, "environment"),
    ("environment name", {**M, "environment": {"A B": "x"}}, "environment.A B"),
    ("environment value", {**M, "environment": {"N": 3}}, "environment.N"),
    ("inputs a string", {**M, "inputs": "a.txt"}, "inputs"),
    ("empty input", {**M, "inputs": ["ok", ""]}, "inputs[1]"),
    ("absolute output", {**M, "outputs": ["/etc/passwd"]}, "outputs[0]"),
    ("output above the job directory", {**M, "outputs": ["fine", "../x"]}, "outputs[1]"),
    ("bad id", {**M, "id": "has space"}, "id"),
    ("id too long", {**M, "id": "a" * 37}, "id"),
    ("events without queue", {**M, "events": {"client_id": "4"}}, "events.queue"),
    ("events queue name", {**M, "events": {"queue": "-x"}}, "events.queue"),
    ("events unknown key", {**M, "events": {"queue": "q", "route": "x"}}, "events.route"),
]


@pytest.mark.parametrize("name, document, field", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_known_bad_specs_are_refused_by_both(name, document, field):
    assert not valid("spec", document), name
    with pytest.raises(SpecError) as info:
        parse(document)
    assert info.value.field == field


# What JSON Schema cannot say, the server still checks (docs/schemas.md says so too).
BEYOND_THE_SCHEMA = [
    ("output above the job directory after normalising", {**M, "outputs": ["a/../../b"]}, "outputs[0]"),
    ("unpaired surrogate", {**M, "command": "echo \ud800"}, "command"),
    ("environment too large in all", {**M, "environment": {f"V{i}": "x" * 30_000 for i in range(10)}},
     "environment"),
]


@pytest.mark.parametrize("name, document, field", BEYOND_THE_SCHEMA, ids=[b[0] for b in BEYOND_THE_SCHEMA])
def test_what_only_the_server_refuses(name, document, field):
    assert valid("spec", document), name
    with pytest.raises(SpecError) as info:
        parse(document)
    assert info.value.field == field


@settings(max_examples=400, deadline=None, database=None)
@given(valid_specs())
def test_every_spec_the_parser_accepts_the_schema_accepts(data):
    parse(data)
    assert valid("spec", data), why_not("spec", data)


@settings(max_examples=400, deadline=None, database=None)
@given(near_valid_specs())
def test_the_schema_never_refuses_what_the_parser_accepts(data):
    try:
        parse(data)
    except SpecError:
        return
    assert valid("spec", data), why_not("spec", data)


# -- job events --------------------------------------------------------------------------------


def job(state: str, **fields: object) -> Job:
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    return Job(id="g-main-42", tool_id="bwa_mem", command="true", destination="local", queue="local", state=state,
               created_at=now, **fields)


def test_every_event_the_code_builds_is_what_the_schema_says():
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    built = [events.state_event(job(state.value, event_seq=n)) for n, state in enumerate(JobState)]
    built.append(events.state_event(job("error", event_seq=5, exit_code=137, signal=9, client_id="42",
                                        reason="killed by signal SIGKILL", runner_state="memory_limit_reached",
                                        external_id="host-a:4242", queued_at=now, running_at=now,
                                        ended_at=now + timedelta(seconds=3), finished_at=now + timedelta(seconds=4))))
    built.append(events.unknown_event("g-main-43"))
    for event in built:
        assert valid("event", event), why_not("event", event)
        model = events.EventModel.model_validate(event)
        assert set(event) <= set(events.EventModel.model_fields), set(event) - set(events.EventModel.model_fields)
        assert model.state == event["state"]


@pytest.mark.parametrize("change", [{"state": "finished"}, {"seq": -1}, {"version": 2}, {"event": "job"},
                                    {"job_id": None}, {"times": "now"}])
def test_known_bad_events_are_refused(change):
    event = {**events.state_event(job("ok")), **change}
    assert not valid("event", event)
    with pytest.raises(ValueError):
        events.EventModel.model_validate(event)


# -- job_conf ----------------------------------------------------------------------------------

BAD_CONFS = [
    "- local:///\n",
    "rules: []\n",
    "destinations: {}\n",
    "destinations: [local:///]\n",
    "destinations: {a: local:///}\nrulez: []\n",
    "destinations: {a: 3}\n",
    "destinations: {a: 'condor:///'}\n",
    "destinations: {a: 'local://x/'}\n",
    "destinations: {a: {url: 'pbs:///'}}\n",
    "destinations: {a: {queue: q}}\n",
    "destinations: {a: {runner: pbs}}\n",
    "destinations: {a: {runner: local, cpus: 4}}\n",
    "destinations: {a: {runner: local, max_cores: 0}}\n",
    "destinations: {a: {runner: local, max_cores: '4'}}\n",
    "destinations: {a: {runner: local, max_memory_mb: 1.5}}\n",
    "destinations: {a: {runner: local, max_walltime_s: true}}\n",
    "destinations: {a: {runner: local, params: [1]}}\n",
    "destinations: {a: {runner: local, params: {kill_grace_s: abc}}}\n",
    "destinations: {a: {runner: local, params: {kill_grace_s: -5}}}\n",
    "destinations: {a: {runner: local, params: {max_jobs: 0}}}\n",
    "destinations: {a: {runner: local, params: {max_jobs: '4'}}}\n",
    "destinations: {a: {runner: drmaa, params: {max_jobs: 4}}}\n",
    "destinations: {a: {runner: drmaa, params: {submit_retries: 1.5}}}\n",
    "destinations: {a: {runner: mesos, params: {on_agent_lost: maybe}}}\n",
    "destinations: {a: {runner: local, native_specification: '-q x'}}\n",
    "destinations: {a: {runner: local, env: [X]}}\n",
    "destinations: {a: {runner: local, env: {X: 1}}}\n",
    "destinations: {a: {runner: local, env: {'BAD NAME': x}}}\n",
    "destinations: {a: local:///}\nrules: {tool: x}\n",
    "destinations: {a: local:///}\nrules: [{tool: x}]\n",
    "destinations: {a: local:///}\nrules: [{tool: x, destination: a, cpu: 2}]\n",
    "destinations: {a: local:///}\nrules: [{destination: a, min_cores: 0}]\n",
    "destinations: {a: local:///}\nrules: [{destination: a, min_memory_mb: x}]\n",
    "destinations: {a: local:///}\nrules: [{destination: a, tool: [1]}]\n",
    "destinations: {a: local:///}\nrules: [{destination: a, users: {x: 1}}]\n",
    "destinations: {a: local:///}\nrules: [{destination: 3}]\n",
    "destinations: {a: local:///}\nlimits: {type: walltime, value: 10}\n",
    "destinations: {a: local:///}\nlimits: [{type: user_jobs, value: 2}]\n",
    "destinations: {a: local:///}\nlimits: [{type: registered_user_concurrent_jobs, value: -1}]\n",
    "destinations: {a: local:///}\nlimits: [{type: registered_user_concurrent_jobs, value: 2, per: x}]\n",
    "destinations: {a: local:///}\nlimits: [{type: registered_user_concurrent_jobs}]\n",
    "destinations: {a: {runner: local, tags: [1]}}\n",
    "destinations: {a: {runner: local, resubmit: [{condition: walltime_reached, when: now}]}}\n",
    "destinations: {a: {runner: local, limits: [{type: registered_user_concurrent_jobs, value: 2}]}}\n",
]


@pytest.mark.parametrize("text", BAD_CONFS)
def test_known_bad_job_confs_are_refused_by_both(text):
    data = yaml.safe_load(text)
    assert not valid("job-conf", data), text
    with pytest.raises(ConfigError):
        routing.parse(data)


@pytest.mark.parametrize("text", [
    "destinations: {a: local:///}\nrules: [{tool: x, destination: gpu}]\n",
    "destinations: {a: local:///}\ndefault: b\n",
    "destinations: {a: {runner: local, resubmit: [{destination: b}]}}\n",
    "destinations: {a: local:///}\nlimits: [{type: destination_total_concurrent_jobs, id: b, value: 1}]\n",
])
def test_a_destination_that_does_not_exist_is_refused_by_the_code_only(text):
    """A reference to a destination is a name the schema cannot check against the others."""
    data = yaml.safe_load(text)
    assert valid("job-conf", data)
    with pytest.raises(ConfigError, match="unknown destination"):
        routing.parse(data)


@pytest.mark.parametrize("text", [
    "destinations: {a: {runner: local, resubmit: [{condition: 'walltime_reached or __import__'}]}}\n",
    "destinations: {a: {runner: local, resubmit: [{condition: 'attempt <'}]}}\n",
    "destinations: {a: local:///}\nlimits: [{type: walltime, value: 'two hours'}]\n",
    "destinations: {a: local:///}\nlimits: [{type: output_size, value: 10 parsecs}]\n",
])
def test_an_expression_or_a_duration_is_refused_by_the_code_only(text):
    """A resubmit condition is an expression, a walltime a duration: the schema says string."""
    data = yaml.safe_load(text)
    assert valid("job-conf", data)
    with pytest.raises(ConfigError):
        routing.parse(data)


# -- the published files and the command -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(schemas.MODELS))
def test_the_published_files_are_current(name):
    published = ROOT / "docs" / "schemas" / f"{name}.schema.json"
    assert published.read_text() == schemas.text(name), \
        "docs/schemas/ is stale: run `galaxy-tasks schema --write docs/schemas`"
    Draft202012Validator.check_schema(json.loads(published.read_text()))


@pytest.mark.parametrize("name", sorted(schemas.MODELS))
def test_galaxy_tasks_schema_prints_it(name, capsys):
    assert main(["schema", name]) == 0
    assert json.loads(capsys.readouterr().out) == schemas.schema(name)


def test_the_docs_link_every_schema():
    text = (ROOT / "docs" / "schemas.md").read_text()
    for name in schemas.MODELS:
        assert f"(schemas/{name}.schema.json)" in text
    assert "(docs/schemas.md)" in (ROOT / "README.md").read_text()


def test_a_params_own_check_runs_after_its_type():
    from dataclasses import dataclass

    from galaxy_tasks.runners.params import load, param
    from galaxy_tasks.yamlconf import Where

    @dataclass(frozen=True)
    class Checked:
        partition: str | None = param(None, check=lambda v: None if v.isidentifier() else "must be a name")

    assert load(Checked, {"partition": "debug"}).partition == "debug"
    with pytest.raises(ConfigError, match=r"job_conf: params.partition: must be a name"):
        load(Checked, {"partition": "not a name"}, Where("job_conf", "params"))
    with pytest.raises(ConfigError, match="must be a string"):
        load(Checked, {"partition": True}, Where("job_conf", "params"))
