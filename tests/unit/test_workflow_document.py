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


def test_a_huge_fan_out_is_refused_before_any_element_is_built():
    """A few bytes that ask for a billion seeds (or a sweep's product) cost nothing to refuse:
    building them first took a worker's memory until it was killed."""
    import tracemalloc

    tracemalloc.start()
    try:
        assert refused({"m": step(seeds=1_000_000_000)}).field == "steps.m.seeds"
        assert refused({"m": step(seeds=200_000)}).field == "steps.m.seeds"
        grid = {name: list(range(100)) for name in ("a", "b", "c", "d", "e")}
        assert refused({"s": step(sweep=grid)}).field == "steps.s.sweep"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"refusing took {peak} bytes"


def test_a_workflow_is_bounded_as_a_whole():
    """Each step within its own bound, the workflow still may not make more jobs in all."""
    steps = {"a": step(seeds=10_000), "b": step(foreach="a"), "c": step(seeds=10)}
    error = refused(steps)
    assert error.field in ("steps.b", "steps.c") and "20000 in all" in error.message
    parse_workflow({"name": "w", "steps": {"a": step(seeds=10_000), "b": step(foreach="a")}})


def test_the_workflow_bound_is_the_deployments_and_is_checked_before_anything_is_recorded(tmp_path):
    """GALAXY_TASKS_WORKFLOW_MAX_JOBS bounds a workflow's jobs, all steps together: one over
    it is refused at submit naming the step that crossed it and the setting, before that
    step's elements are built, and nothing is recorded."""
    from galaxy_tasks import config

    with embedded_context(tmp_path, "destinations:\n  stub: {runner: stub}\ndefault: stub\n",
                          WORKFLOW_MAX_JOBS="50") as ctx:
        with pytest.raises(WorkflowError) as caught:
            schedule.submit(ctx, {"name": "w", "steps": {"a": step(seeds=40), "b": step(map=list(range(11)))}})
        assert caught.value.field == "steps.b"
        assert caught.value.message == ("brings the workflow to 51 jobs, more than 50 in all "
                                        "(GALAXY_TASKS_WORKFLOW_MAX_JOBS)")
        assert ctx.store.recent_workflows() == [] and ctx.store.recent() == []
        workflow, created = schedule.submit(ctx, {"name": "w", "steps": {"a": step(seeds=40),
                                                                        "b": step(map=list(range(10)))}})
        assert len(created.start) == 50
    assert config.load({}).workflow_max_jobs == 20_000
    with pytest.raises(ValueError, match="WORKFLOW_MAX_JOBS must be at most 100000"):
        config.load({"GALAXY_TASKS_WORKFLOW_MAX_JOBS": "200000"})
    assert config.load({}).workflow_pass_most == 1000
    for most in ("0", "10001"):
        with pytest.raises(ValueError, match="WORKFLOW_PASS_MOST must be"):
            config.load({"GALAXY_TASKS_WORKFLOW_PASS_MOST": most})


def test_every_element_is_checked_at_submit(tmp_path):
    """An item that makes one element's spec invalid refuses the workflow at submit, naming
    the element, and nothing is recorded: it is not found only when that job is created."""
    error = refused({"m": step("cat ${item} > out", ["${item}.out"], map=["a", "../../escape"])})
    assert error.field == "steps.m.spec.outputs[0]" and "escapes the job directory" in error.message
    assert "element 1" in error.message and "../../escape" in error.message
    with embedded_context(tmp_path, "destinations:\n  stub: {runner: stub}\ndefault: stub\n") as ctx:
        with pytest.raises(WorkflowError):
            schedule.submit(ctx, {"name": "w", "steps": {"m": step("true", ["${item}"], map=["a", "/etc/x"])}})
        assert ctx.store.recent(limit=10) == [] and ctx.store.recent_workflows(limit=10) == []


def test_items_and_params_are_one_shell_word_each_in_the_command():
    """A map item or a sweep value is data, not shell: `bob; touch x` stays one argument."""
    from galaxy_tasks.workflows.document import render

    def resolve(step: str, output: str) -> list[str]:
        return []

    spec = {"tool_id": "t", "command": "greet ${item} --n ${params.n} > ${item}.out", "outputs": ["${item}.out"]}
    rendered = render(spec, {"item": "bob; touch x", "params": {"n": "$(id)"}}, resolve)
    assert rendered["command"] == "greet 'bob; touch x' --n '$(id)' > 'bob; touch x'.out"
    assert rendered["outputs"] == ["bob; touch x.out"], "outside the command a value is a path, not shell"
    plain = render(spec, {"item": "s1", "params": {"n": 3}}, resolve)
    assert plain["command"] == "greet s1 --n 3 > s1.out", "a plain word is left as it is"
