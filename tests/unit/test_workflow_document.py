"""Invalid workflows are refused at submit with a message naming the step, and nothing is
recorded for them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from galaxy_tasks.workflows import schedule
from galaxy_tasks.workflows.document import WorkflowError, parse_workflow
from tests.support.embedded import embedded_context


def step(command: str = "true", outputs: list[str] | None = None, **fan: Any) -> dict[str, Any]:
    return {"spec": {"tool_id": "t", "command": command, "outputs": outputs or []}, **fan}


def refused(steps: dict[str, Any]) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow({"name": "w", "steps": steps})
    return caught.value


def test_a_cycle_is_refused_naming_its_steps():
    error = refused({"a": step(after="c"), "b": step(after="a"), "c": step(after="b")})
    assert "form a cycle" in error.message and "a -> c -> b -> a" in error.message


def test_a_step_cannot_need_itself():
    assert refused({"a": step(after="a")}).field == "steps.a.after"


def test_a_reference_to_a_missing_step_is_refused():
    error = refused({"a": step("cat ${steps.nope.outputs.x}")})
    assert error.field == "steps.a.spec" and "'nope'" in error.message


def test_a_reference_to_a_missing_output_is_refused():
    error = refused({"a": step("x > out", ["out"]), "b": step("cat ${steps.a.outputs.other}")})
    assert error.field == "steps.b.spec" and "'other'" in error.message and "'a'" in error.message


def test_a_step_whose_spec_is_refused_is_named():
    error = refused({"ok": step(), "bad": {"spec": {"tool_id": "t", "command": "x", "cores": 0}}})
    assert error.field == "steps.bad.spec.cores" and "at least 1" in error.message
    assert refused({"a": {"spec": {"tool_id": "t"}}}).field == "steps.a.spec.command"
    assert refused({"a": {"spec": {"tool_id": "t", "command": "x", "id": "mine"}}}).field == "steps.a.spec.id"


def test_a_sweep_with_no_values_is_refused():
    assert refused({"s": step(sweep={"q": []})}).field == "steps.s.sweep.q"
    assert refused({"s": step(sweep={})}).field == "steps.s.sweep"


def test_other_empty_or_wrong_fan_outs_are_refused():
    assert refused({"m": step(map=[])}).field == "steps.m.map"
    assert refused({"m": step(seeds=0)}).field == "steps.m.seeds"
    assert "fans out one way" in refused({"m": step(map=[1], seeds=2)}).message
    assert refused({"m": step(foreach="x")}).field == "steps.m.foreach"


def test_a_mapped_step_is_referred_to_through_foreach_or_reduce():
    error = refused({"m": step("x > o", ["o"], map=[1, 2]), "r": step("cat ${steps.m.outputs.o}")})
    assert error.field == "steps.r.spec" and "foreach or reduce" in error.message


def test_placeholders_a_step_does_not_have_are_refused():
    assert "${item}" in refused({"a": step("echo ${item}")}).message
    assert "params.q" in refused({"a": step("echo ${params.q}", sweep={"d": [1]})}).message
    assert "${seed}" in refused({"a": step("echo ${seed}")}).message


def test_a_document_without_a_name_or_steps_is_refused():
    for bad, where in [({"steps": {"a": step()}}, "name"), ({"name": "w"}, "steps"),
                       ({"name": "w", "steps": {}}, "steps"), ({"name": "w", "steps": {"a": step()}, "x": 1}, "x"),
                       ({"name": "w", "steps": {"bad name": step()}}, "steps.bad name"),
                       ({"name": "w", "steps": {"a": {**step(), "mystery": 1}}}, "steps.a.mystery")]:
        with pytest.raises(WorkflowError) as caught:
            parse_workflow(bad)
        assert caught.value.field == where


def test_shell_variables_are_left_to_the_shell():
    workflow = parse_workflow({"name": "w", "steps": {"a": step("echo ${HOME} $PATH")}})
    assert workflow.steps[0].spec["command"] == "echo ${HOME} $PATH"


def test_nothing_is_recorded_for_a_refused_workflow(tmp_path: Path):
    with embedded_context(tmp_path, "destinations:\n  stub: {runner: stub}\ndefault: stub\n") as ctx:
        with pytest.raises(WorkflowError):
            schedule.submit(ctx, {"name": "w", "steps": {"a": step(), "b": step(sweep={"q": []})}})
        assert ctx.store.recent_workflows() == [] and ctx.store.recent() == []
