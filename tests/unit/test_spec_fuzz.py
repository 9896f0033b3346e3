"""Fuzzing the spec parser: whatever a client sends, the answer is either a JobSpec that
holds every invariant the later steps rely on, or a SpecError naming a field. Any other
exception (a crash in the submit step) fails."""
from __future__ import annotations

import json
import math
import posixpath
import re

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from galaxy_tasks.errors import SpecError
from galaxy_tasks.names import USER_NAME
from galaxy_tasks.spec import FIELDS, JobSpec, parse, parse_json

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,35}")

FUZZ = settings(
    max_examples=3000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SMALLER = settings(FUZZ, max_examples=1000)
SMALL = settings(FUZZ, max_examples=500)

# -- strategies ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

# text with the characters that matter: blanks, NUL, newlines, quotes, non-ASCII, surrogates
tricky_text = st.text(
    alphabet=st.sampled_from(list("aZ09 _-./$'\"\\\n\t\x00é") + ["\U0001f600"]), max_size=12
) | st.text(max_size=12)

path_parts = st.sampled_from(["..", ".", "a", "b c", "", "x.txt", "..a", "a..", "~", " "])
paths = st.builds(
    lambda lead, parts, trail: lead + "/".join(parts) + trail,
    st.sampled_from(["", "", "", "/", "./", "//"]),
    st.lists(path_parts, max_size=6),
    st.sampled_from(["", "", "/", "/."]),
)

env_names = (
    st.from_regex(ENV_NAME, fullmatch=True).filter(lambda s: len(s) < 30)
    | st.text(alphabet=st.sampled_from(list("Aa_9-= $.\n\x00É")), max_size=6)
)
env_values = st.one_of(tricky_text, tricky_text, json_scalars, st.lists(st.text(max_size=3), max_size=2))
environments = st.one_of(
    st.dictionaries(env_names, env_values, max_size=5),
    st.dictionaries(env_names, tricky_text, max_size=5),  # mostly valid
    json_values,
)

whole_numbers = st.one_of(
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, True, False, 1.0, 4.5, math.inf, math.nan, "4", None]),
)

job_ids = st.one_of(
    st.from_regex(JOB_ID, fullmatch=True),
    st.from_regex(JOB_ID, fullmatch=True).map(lambda s: s + "\n"),
    tricky_text,
    json_scalars,
)

path_lists = st.one_of(
    st.lists(paths, max_size=5),
    st.lists(st.one_of(paths, tricky_text, json_scalars), max_size=4),
    json_values,
)

texts = st.one_of(tricky_text, st.text(min_size=1, max_size=30), json_scalars, st.text(min_size=250, max_size=260))

FIELD_VALUES = {
    "tool_id": texts,
    "command": st.one_of(texts, st.text(min_size=1, max_size=200)),
    "tool_version": texts,
    "user": texts,
    "environment": environments,
    "inputs": path_lists,
    "outputs": path_lists,
    "cores": whole_numbers,
    "memory_mb": whole_numbers,
    "walltime_s": whole_numbers,
    "destination": texts,
    "environment_setup_file": texts,
    "id": job_ids,
    "events": st.one_of(json_values, st.fixed_dictionaries({"queue": texts}, optional={"client_id": texts})),
    "reuse": st.one_of(json_values, st.booleans()),
    "run_as": st.one_of(json_values, texts),
    "gpus": whole_numbers,
    "native_specification": st.one_of(json_values, texts),
    "output_size_bytes": whole_numbers,
    "handover_dir": st.one_of(json_values, texts),
    "returns": path_lists,
    "rewrite": path_lists,
}


FIELD_GOOD = {
    "tool_id": st.text(min_size=1, max_size=40).filter(lambda s: s.strip()),
    "command": st.text(min_size=1, max_size=200).filter(lambda s: s.strip()),
    "tool_version": st.text(max_size=20),
    "user": st.text(max_size=20),
    "environment": st.dictionaries(
        st.from_regex(ENV_NAME, fullmatch=True).filter(lambda s: len(s) < 30), tricky_text, max_size=5
    ),
    "inputs": st.lists(paths.filter(lambda p: p.strip()), max_size=5),
    "outputs": st.lists(paths.filter(lambda p: p.strip()), max_size=5),
    "cores": st.integers(min_value=1, max_value=256),
    "memory_mb": st.integers(min_value=1, max_value=2**31 - 1),
    "walltime_s": st.integers(min_value=1, max_value=2**31 - 1),
    "destination": st.text(max_size=20),
    "environment_setup_file": st.text(max_size=20),
    "id": st.from_regex(JOB_ID, fullmatch=True),
    "events": st.fixed_dictionaries({"queue": st.from_regex(r"[a-z][a-z0-9_.:-]{0,30}", fullmatch=True)},
                                    optional={"client_id": st.text(max_size=20)}),
    "reuse": st.booleans(),
    "run_as": st.from_regex(USER_NAME, fullmatch=True),
    "gpus": st.integers(min_value=1, max_value=2**31 - 1),
    "native_specification": st.text(min_size=1, max_size=30).filter(lambda s: s.strip()),
    "output_size_bytes": st.integers(min_value=1, max_value=2**63 - 1),
    "handover_dir": st.from_regex(r"/[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True),
    "returns": st.lists(st.from_regex(r"/[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True), max_size=3),
    "rewrite": st.lists(st.from_regex(r"/[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True), max_size=3),
}


@st.composite
def near_valid_specs(draw):
    """Mostly valid specs with a few fields of random type or content, sometimes a
    required field missing and sometimes a field that does not exist."""
    data = {"tool_id": "tool", "command": "echo hi"}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=8, unique=True)):
        bad = draw(st.integers(0, 9)) < 2
        data[name] = draw(FIELD_VALUES[name] if bad else FIELD_GOOD[name])
    if draw(st.integers(0, 19)) == 0:
        del data[draw(st.sampled_from(["tool_id", "command"]))]
    if draw(st.integers(0, 19)) == 0:
        data[draw(st.text(max_size=10))] = draw(json_values)
    return data


# -- the property ----------------------------------------------------------------------


def check_invariants(spec: JobSpec) -> None:
    assert isinstance(spec, JobSpec)
    for name in ("tool_id", "command"):
        value = getattr(spec, name)
        assert isinstance(value, str) and value.strip(), name
        assert "\x00" not in value
    for name in ("tool_version", "user", "destination", "environment_setup_file"):
        value = getattr(spec, name)
        assert value is None or (isinstance(value, str) and "\x00" not in value), name
    assert type(spec.cores) is int and 1 <= spec.cores <= 2**31 - 1
    for name in ("memory_mb", "walltime_s"):
        value = getattr(spec, name)
        assert value is None or (type(value) is int and 1 <= value <= 2**31 - 1), name
    assert isinstance(spec.environment, dict)
    for name, value in spec.environment.items():
        assert isinstance(name, str) and ENV_NAME.fullmatch(name), repr(name)
        assert isinstance(value, str) and "\x00" not in value
    for path in spec.inputs:
        assert isinstance(path, str) and path.strip() and "\x00" not in path
    for path in spec.outputs:
        assert isinstance(path, str) and path.strip() and "\x00" not in path
        assert not posixpath.isabs(path), path
        normal = posixpath.normpath(path)
        assert normal == path
        assert normal != ".." and not normal.startswith("../"), path
        # joined to a job directory, it stays inside it
        joined = posixpath.normpath(posixpath.join("/jobs/42", path))
        assert joined == "/jobs/42" or joined.startswith("/jobs/42/"), path
    assert spec.id is None or (isinstance(spec.id, str) and JOB_ID.fullmatch(spec.id)), repr(spec.id)
    if spec.events is not None:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}", spec.events.queue), spec.events
        assert spec.events.client_id is None or "\x00" not in spec.events.client_id
    # what was accepted once is accepted again, unchanged (the spec is stored as JSON)
    assert parse(json.loads(json.dumps(spec.to_json()))) == spec


def check(data) -> None:
    try:
        spec = parse(data)
    except SpecError as error:
        assert isinstance(error.field, str) and error.field
        assert isinstance(error.message, str) and error.message
        event("refused: " + error.field.split("[")[0].split(".")[0])
        return
    event("accepted")
    check_invariants(spec)


@FUZZ
@given(near_valid_specs())
def test_near_valid_specs(data):
    check(data)


@SMALLER
@given(json_values)
def test_arbitrary_json_values(data):
    check(data)


@SMALL
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), json_values, max_size=8))
def test_known_fields_with_arbitrary_values(data):
    check(data)


def check_text(text) -> None:
    try:
        spec = parse_json(text)
    except SpecError as error:
        assert error.field and error.message
        return
    check_invariants(spec)


@SMALLER
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60)))
def test_parse_json_arbitrary_text(text):
    check_text(text)


@SMALL
@given(near_valid_specs(), st.integers(min_value=0), st.integers(min_value=0, max_value=3))
def test_parse_json_mangled_specs(data, where, how):
    """Valid JSON of a near-valid spec, then cut, doubled or bit-flipped."""
    text = json.dumps(data, allow_nan=True)
    i = where % (len(text) + 1)
    mangled = [text, text[:i], text[:i] + text, text[:i] + chr((ord(text[i - 1]) ^ 1) if i else 0) + text[i:]][how]
    check_text(mangled)


# -- the other half: a parser that refused everything would pass the tests above --------

safe_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
safe_nonblank = safe_text.filter(lambda s: s.strip())
relative_paths = st.lists(st.sampled_from(["a", "b c", "x.txt", "dir", "é", "..a"]), min_size=1, max_size=4).map(
    "/".join)

FIELD_VALID = {
    "tool_id": safe_nonblank,
    "command": safe_nonblank,
    "tool_version": st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                            max_size=64),
    "user": safe_text,
    "environment": st.dictionaries(st.from_regex(ENV_NAME, fullmatch=True).filter(lambda s: len(s) < 30),
                                   safe_text, max_size=5),
    "inputs": st.lists(safe_nonblank, max_size=5),
    "outputs": st.lists(relative_paths, max_size=5),
    "cores": st.integers(min_value=1, max_value=256),
    "memory_mb": st.integers(min_value=1, max_value=2**31 - 1),
    "walltime_s": st.integers(min_value=1, max_value=2**31 - 1),
    "destination": safe_text,
    "environment_setup_file": safe_text,
    "id": st.from_regex(JOB_ID, fullmatch=True),
    "events": st.fixed_dictionaries({"queue": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,60}", fullmatch=True)},
                                    optional={"client_id": safe_text}),
    "reuse": st.booleans(),
    "run_as": st.from_regex(USER_NAME, fullmatch=True),
    "gpus": st.integers(min_value=1, max_value=2**31 - 1),
    "native_specification": safe_nonblank,
    "output_size_bytes": st.integers(min_value=1, max_value=2**63 - 1),
    "handover_dir": st.from_regex(r"/[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True),
    "returns": st.lists(st.from_regex(r"/[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True), max_size=3),
    "rewrite": st.lists(st.from_regex(r"/[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True), max_size=3),
}


@st.composite
def valid_specs(draw):
    data = {"tool_id": draw(FIELD_VALID["tool_id"]), "command": draw(FIELD_VALID["command"])}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS - {"tool_id", "command"})), max_size=12, unique=True)):
        data[name] = draw(FIELD_VALID[name])
    return data


@SMALLER
@given(valid_specs())
def test_specs_of_only_good_values_are_accepted(data):
    spec = parse(data)  # a SpecError here fails the test: a good spec was refused
    check_invariants(spec)
    assert (spec.tool_id, spec.command, spec.cores) == (data["tool_id"], data["command"], data.get("cores", 1))
    assert spec.environment == data.get("environment", {}) and spec.inputs == data.get("inputs", [])
    assert parse_json(json.dumps(data)) == spec
