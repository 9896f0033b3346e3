"""The job spec: what a client may submit, and the field named when it is refused."""
from __future__ import annotations

import json

import pytest

from galaxy_tasks.errors import SpecError
from galaxy_tasks.spec import FIELDS, JobSpec, parse, parse_json

MINIMAL = {"tool_id": "cat1", "command": "cat input.txt > out.txt"}

FULL = {
    "id": "job-0001_a",
    "tool_id": "toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7.17",
    "tool_version": "0.7.17",
    "user": "alice@example.org",
    "command": "bwa mem -t \"$GALAXY_SLOTS\" ref.fa reads.fq > out/aln.sam",
    "environment": {"LC_ALL": "C", "_PRIVATE": "x y $z 'q'", "A1": ""},
    "inputs": ["/data/ref.fa", "reads.fq"],
    "outputs": ["out/aln.sam", "./report.html", "a/b/../c.txt"],
    "cores": 8,
    "memory_mb": 16000,
    "walltime_s": 3600,
    "destination": "cluster",
    "environment_setup_file": "/opt/galaxy/env.sh",
}


def refused(data) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(data)
    error = info.value
    assert error.field, "a refusal must name a field"
    assert error.message
    assert str(error).startswith(error.field + ": ")
    return error


def with_(**changes):
    data = dict(MINIMAL)
    data.update(changes)
    return data


# -- accepted specs --------------------------------------------------------------------


def test_minimal_spec_gets_defaults():
    spec = parse(MINIMAL)
    assert spec == JobSpec(tool_id="cat1", command="cat input.txt > out.txt")
    assert spec.cores == 1
    assert spec.environment == {} and spec.inputs == [] and spec.outputs == []
    assert spec.id is None and spec.memory_mb is None and spec.destination is None


def test_full_spec_keeps_every_field():
    spec = parse(FULL)
    assert spec.id == "job-0001_a"
    assert spec.tool_version == "0.7.17"
    assert spec.user == "alice@example.org"
    assert spec.environment == FULL["environment"]
    assert spec.inputs == ["/data/ref.fa", "reads.fq"]
    assert spec.cores == 8 and spec.memory_mb == 16000 and spec.walltime_s == 3600
    assert spec.destination == "cluster"
    assert spec.environment_setup_file == "/opt/galaxy/env.sh"


def test_outputs_are_normalised():
    assert parse(FULL).outputs == ["out/aln.sam", "report.html", "a/c.txt"]


@pytest.mark.parametrize("data", [MINIMAL, FULL], ids=["minimal", "full"])
def test_round_trip_through_json(data):
    spec = parse(data)
    text = json.dumps(spec.to_json())
    again = parse_json(text)
    assert again == spec
    assert parse(again.to_json()) == spec
    assert set(spec.to_json()) == FIELDS


def test_parse_json_accepts_bytes():
    assert parse_json(json.dumps(FULL).encode()) == parse(FULL)


def test_null_optional_fields_mean_default():
    spec = parse(with_(cores=None, environment=None, outputs=None, user=None, id=None))
    assert spec == parse(MINIMAL)


def test_large_command_is_accepted():
    command = "echo " + "x" * 100_000
    assert parse(with_(command=command)).command == command


# -- refused specs: the field is named ------------------------------------------------


@pytest.mark.parametrize(
    "data, field",
    [
        ({"tool_id": "t"}, "command"),
        (with_(command=None), "command"),
        (with_(command=""), "command"),
        (with_(command="   \n\t"), "command"),
        (with_(command=["echo", "hi"]), "command"),
        (with_(command="echo \x00"), "command"),
        (with_(command="x" * (256 * 1024 + 1)), "command"),
        ({"command": "true"}, "tool_id"),
        (with_(tool_id=""), "tool_id"),
        (with_(tool_id="   "), "tool_id"),
        (with_(tool_id=7), "tool_id"),
        (with_(tool_id="t" * 256), "tool_id"),
        (with_(user=["alice"]), "user"),
        (with_(tool_version=1.0), "tool_version"),
        (with_(destination={"name": "x"}), "destination"),
    ],
)
def test_bad_text_fields(data, field):
    assert refused(data).field == field


@pytest.mark.parametrize(
    "environment, field",
    [
        ({"COUNT": 3}, "environment.COUNT"),
        ({"FLAG": True}, "environment.FLAG"),
        ({"NOTHING": None}, "environment.NOTHING"),
        ({"LIST": ["a"]}, "environment.LIST"),
        ({"OK": "fine", "NESTED": {"a": "b"}}, "environment.NESTED"),
        ({"NUL": "a\x00b"}, "environment.NUL"),
        ({"1ABC": "x"}, "environment.1ABC"),
        ({"A-B": "x"}, "environment.A-B"),
        ({"A B": "x"}, "environment.A B"),
        ({"": "x"}, "environment."),
        ({"A=B": "x"}, "environment.A=B"),
        ({"X;rm": "x"}, "environment.X;rm"),
        ({"FOO\n": "x"}, "environment.FOO\n"),
        ({"É": "x"}, "environment.É"),
    ],
)
def test_bad_environment(environment, field):
    assert refused(with_(environment=environment)).field == field


@pytest.mark.parametrize("environment", [["A=b"], "A=b", 3])
def test_environment_must_be_an_object(environment):
    assert refused(with_(environment=environment)).field == "environment"


@pytest.mark.parametrize("name", ["cores", "memory_mb", "walltime_s"])
@pytest.mark.parametrize("value", [0, -1, -(2**40), True, False, 1.0, 2.5, "4", [4], 2**31])
def test_bad_resources(name, value):
    error = refused(with_(**{name: value}))
    assert error.field == name


@pytest.mark.parametrize("name", ["cores", "memory_mb", "walltime_s"])
def test_resource_bounds_accepted(name):
    assert getattr(parse(with_(**{name: 1})), name) == 1
    assert getattr(parse(with_(**{name: 2**31 - 1})), name) == 2**31 - 1


@pytest.mark.parametrize(
    "path",
    ["../x", "..", "/abs", "/", "//etc/passwd", "a/../../b", "./../x", "a/b/../../../c", "../job/x"],
)
def test_output_escaping_job_dir_is_refused(path):
    error = refused(with_(outputs=["fine.txt", path]))
    assert error.field == "outputs[1]"
    assert "escapes" in error.message


@pytest.mark.parametrize("path", ["", "  ", 3, None, ["a"], "a\x00b"])
def test_output_must_be_non_empty_string(path):
    assert refused(with_(outputs=[path])).field == "outputs[0]"


@pytest.mark.parametrize("path", ["", 3, "a\x00b"])
def test_input_must_be_non_empty_string(path):
    assert refused(with_(inputs=["ok", path])).field == "inputs[1]"


@pytest.mark.parametrize("name", ["inputs", "outputs"])
def test_paths_must_be_a_list(name):
    assert refused(with_(**{name: "a.txt"})).field == name


def test_inputs_may_be_absolute():
    assert parse(with_(inputs=["/data/x", "../shared/y"])).inputs == ["/data/x", "../shared/y"]


def test_unknown_field_is_named():
    error = refused(with_(cpus=4))
    assert error.field == "cpus"
    assert "unknown field" in error.message


def test_first_unknown_field_is_named_in_sorted_order():
    assert refused(with_(zeta=1, alpha=2)).field == "alpha"


@pytest.mark.parametrize("data", [[MINIMAL], "spec", 3, None, True])
def test_spec_must_be_an_object(data):
    assert refused(data).field == "spec"


@pytest.mark.parametrize(
    "text", ["", "{", "{'tool_id': 't'}", "{\"tool_id\": \"t\",}", "nul", b"\xff\xfe\x00", "[1, 2"]
)
def test_invalid_json_is_refused_as_spec(text):
    with pytest.raises(SpecError) as info:
        parse_json(text)
    assert info.value.field == "spec"
    assert "invalid JSON" in info.value.message


def test_deeply_nested_json_is_refused_as_spec():
    with pytest.raises(SpecError) as info:
        parse_json("[" * 200_000 + "]" * 200_000)
    assert info.value.field == "spec"


def test_valid_json_that_is_not_an_object_is_refused_as_spec():
    with pytest.raises(SpecError) as info:
        parse_json("[1, 2, 3]")
    assert info.value.field == "spec"
    assert "object" in info.value.message


def test_parse_json_names_fields_too():
    with pytest.raises(SpecError) as info:
        parse_json(json.dumps(with_(cores=0)))
    assert info.value.field == "cores"


@pytest.mark.parametrize(
    "job_id",
    ["", "-start", "_start", "a" * 37, "has space", "slash/x", "dot.x", "a\n", "é", 42, ["a"], "x;y"],
)
def test_bad_id(job_id):
    assert refused(with_(id=job_id)).field == "id"


@pytest.mark.parametrize("job_id", ["a", "0", "A" * 36, "job_1-2", "3f2b8c1e-7c0d-4d8e-9a57-1b2c3d4e5f60"])
def test_good_id(job_id):
    assert parse(with_(id=job_id)).id == job_id


def test_text_that_is_not_encodable_is_refused():
    with pytest.raises(SpecError) as info:
        parse_json('{"tool_id": "t", "command": "echo \\ud800"}')
    assert info.value.field == "command"


@pytest.mark.parametrize("field, value, named", [
    ("inputs", ["/data/x"] * 20_000, "inputs"),
    ("inputs", ["/d/" + "x" * 4000] * 300, "inputs"),
    ("inputs", ["/" + "x" * 5000], "inputs[0]"),
    ("outputs", ["o"] * 20_000, "outputs"),
    ("environment", {"BIG": "x" * 128 * 1024}, "environment.BIG"),
    ("environment", {f"V{i}": "x" * 30_000 for i in range(20)}, "environment"),
    ("environment", {f"V{i}": "1" for i in range(2000)}, "environment"),
])
def test_every_field_is_bounded(field, value, named):
    with pytest.raises(SpecError) as info:
        parse({"tool_id": "t", "command": "true", field: value})
    assert info.value.field == named
