"""A workflow document (YAML or JSON) parsed and checked whole: a refused workflow raises a
`WorkflowError` that names the step, and nothing is recorded for it."""
from __future__ import annotations

import hashlib
import re
import secrets
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from galaxy_tasks.errors import SpecError
from galaxy_tasks.names import JOB_ID
from galaxy_tasks.spec import parse

STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
#: `${steps.<step>.outputs.<declared output path>}`, `${item}`, `${index}`, `${seed}`,
#: `${params.<name>}`: every other `${...}` is left to the job's shell
PLACEHOLDER = re.compile(r"\$\{(?:steps\.(?P<step>[A-Za-z0-9_-]+)\.outputs\.(?P<output>[^}]+)"
                         r"|(?P<word>item|index|seed)|params\.(?P<param>[A-Za-z0-9_]+))\}")
MAX_ELEMENTS = 10_000
MAX_STEPS = 200
#: most jobs one workflow may make, all steps together, unless the deployment says otherwise
#: (GALAXY_TASKS_WORKFLOW_MAX_JOBS): no element is built at submit, but every one becomes
#: a row and a job, a pass at a time
MAX_WORKFLOW_ELEMENTS = 20_000
STEP_KEYS = frozenset({"spec", "map", "sweep", "seeds", "foreach", "reduce", "after"})
FAN_OUT = ("map", "sweep", "seeds", "foreach")
#: the fields of a step's spec whose strings may hold placeholders
TEMPLATED = ("command", "inputs", "outputs", "environment")
EACH, ALL = "each", "all"

#: what a reference to another step's output becomes: (step, output) -> paths
Resolver = Callable[[str, str], list[str]]


class WorkflowError(SpecError):
    """A refused workflow; `field` names the step (`steps.align.map`)."""


@dataclass(frozen=True)
class Step:
    name: str
    spec: dict[str, Any]
    #: the steps this one needs: "each" (the element of the same index) or "all"
    needs: dict[str, str]
    #: how many elements it has (found before anything is built)
    size: int
    #: what its elements' parameters are computed from, one index at a time (`params`):
    #: {"map": [...]}, {"sweep": {...}}, {"seeds": n, "salt": ...}, {"foreach": step} (the
    #: step whose parameters it keeps, itself no foreach) or {} (one element)
    fan: dict[str, Any]

    @property
    def fanned(self) -> bool:
        """Whether it has elements of its own (a map of one value still has)."""
        return bool(self.fan)


@dataclass(frozen=True)
class Workflow:
    name: str
    steps: list[Step]  # each after every step it needs
    user: str | None = None
    document: dict[str, Any] = field(default_factory=dict)
    #: chosen by the client: a duplicated submission then records the workflow once
    id: str | None = None


def parse_workflow(data: Any, max_jobs: int = MAX_WORKFLOW_ELEMENTS) -> Workflow:
    """Check a workflow document and find each step's size, checked alone and added to the
    others' (at most `max_jobs`) before anything of it is built; no element is kept (a
    pass computes each from its step's `fan` and index, see `params`)."""
    if not isinstance(data, Mapping):
        raise WorkflowError("workflow", f"must be an object, not {type(data).__name__}")
    unknown = set(data) - {"id", "name", "user", "steps"}
    if unknown:
        raise WorkflowError(sorted(unknown)[0], "unknown field (known fields: id, name, steps, user)")
    name, user, steps = data.get("name"), data.get("user"), data.get("steps")
    workflow_id = data.get("id")
    if workflow_id is not None and (not isinstance(workflow_id, str) or not JOB_ID.match(workflow_id)):
        raise WorkflowError("id", "must be 1-36 letters, digits, '-' or '_', starting with a letter or digit")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise WorkflowError("name", "is required: a name of at most 255 characters")
    if user is not None and (not isinstance(user, str) or len(user) > 255):
        raise WorkflowError("user", "must be a string of at most 255 characters")
    if not isinstance(steps, Mapping) or not steps:
        raise WorkflowError("steps", "must be an object of step names to steps, with at least one step")
    if len(steps) > MAX_STEPS:
        raise WorkflowError("steps", f"has {len(steps)} steps, more than {MAX_STEPS}")
    raw = {str(step_name): _step_fields(str(step_name), body) for step_name, body in steps.items()}
    order = _order(raw)
    built: dict[str, Step] = {}
    total = 0
    for step_name in order:
        total += _size(f"steps.{step_name}", raw[step_name], built)
        if total > max_jobs:
            raise WorkflowError(f"steps.{step_name}", f"brings the workflow to {total} jobs, more than {max_jobs} "
                                                       "in all (GALAXY_TASKS_WORKFLOW_MAX_JOBS)")
        built[step_name] = _build(step_name, raw[step_name], built)
    return Workflow(name, [built[n] for n in order], user, dict(data), workflow_id)


def _step_fields(name: str, body: Any) -> dict[str, Any]:
    where = f"steps.{name}"
    if not STEP_NAME.match(name):
        raise WorkflowError(where, "a step name is 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    if not isinstance(body, Mapping):
        raise WorkflowError(where, f"must be an object, not {type(body).__name__}")
    unknown = set(body) - STEP_KEYS
    if unknown:
        raise WorkflowError(f"{where}.{sorted(unknown)[0]}",
                            f"unknown field (known fields: {', '.join(sorted(STEP_KEYS))})")
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        raise WorkflowError(f"{where}.spec", "is required: the step's job spec (an object)")
    if "id" in spec:
        raise WorkflowError(f"{where}.spec.id", "is chosen by the workflow (one job id per step element)")
    fan_out = [key for key in FAN_OUT if key in body]
    if len(fan_out) > 1:
        raise WorkflowError(where, f"has both {fan_out[0]} and {fan_out[1]}: a step fans out one way")
    fields = dict(body)
    fields["reduce"] = _names(where, "reduce", body.get("reduce"))
    fields["after"] = _names(where, "after", body.get("after"))
    if "foreach" in body and not isinstance(body["foreach"], str):
        raise WorkflowError(f"{where}.foreach", "must be the name of a step")
    return fields


def _names(where: str, key: str, value: Any) -> list[str]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WorkflowError(f"{where}.{key}", "must be a step name or a list of step names")
    return names


def _referenced(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every (step, output) the spec's strings refer to."""
    return [(m["step"], m["output"]) for text in _strings(spec) for m in PLACEHOLDER.finditer(text) if m["step"]]


def _strings(spec: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for key in TEMPLATED:
        value = spec.get(key)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if isinstance(v, str)]
        elif isinstance(value, Mapping):
            found += [v for v in value.values() if isinstance(v, str)]
    return found


def _order(raw: dict[str, dict[str, Any]]) -> list[str]:
    """The steps, each after those it needs; a missing step or a cycle is refused."""
    needs: dict[str, list[str]] = {}
    for name, body in raw.items():
        wanted = [("reduce", n) for n in body["reduce"]] + [("after", n) for n in body["after"]]
        if "foreach" in body:
            wanted.append(("foreach", body["foreach"]))
        wanted += [("spec", step) for step, _ in _referenced(body["spec"])]
        for key, other in wanted:
            if other not in raw:
                raise WorkflowError(f"steps.{name}.{key}",
                                    f"refers to step {other!r}, which the workflow does not have")
            if other == name:
                raise WorkflowError(f"steps.{name}.{key}", "a step cannot need itself")
        needs[name] = list(dict.fromkeys(other for _, other in wanted))
    order: list[str] = []
    marks: dict[str, int] = {}  # 1: being visited, 2: placed

    def visit(name: str, path: list[str]) -> None:
        if marks.get(name) == 2:
            return
        if marks.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise WorkflowError(f"steps.{name}", f"steps {' -> '.join(cycle)} form a cycle")
        marks[name] = 1
        for other in needs[name]:
            visit(other, path + [name])
        marks[name] = 2
        order.append(name)

    for name in raw:
        visit(name, [])
    return order


def _build(name: str, body: dict[str, Any], built: dict[str, Step]) -> Step:
    where = f"steps.{name}"
    spec = dict(body["spec"])
    size, fan = _fan(where, body, built)
    needs: dict[str, str] = {}
    for other in body["reduce"] + body["after"]:
        needs[other] = ALL
    if "foreach" in body:
        if body["foreach"] in needs:
            raise WorkflowError(f"{where}.foreach", f"step {body['foreach']!r} is both reduced and mapped over")
        needs[body["foreach"]] = EACH
    for other, output in _referenced(spec):
        producer = built[other]
        if output not in (producer.spec.get("outputs") or []):
            raise WorkflowError(f"{where}.spec", f"refers to output {output!r} of step {other!r}, which declares "
                                                 f"only {producer.spec.get('outputs') or []}")
        if other not in needs:
            if producer.fanned:
                raise WorkflowError(f"{where}.spec", f"refers to step {other!r}, which has "
                                                     f"{producer.size} elements: name it in foreach or reduce")
            needs[other] = ALL
    root = built[fan["foreach"]].fan if "foreach" in fan else fan
    _check_placeholders(where, spec, params(root, 0) | {"index": 0})
    # every element whose values reach its spec is checked here, at submit, one at a time
    # (none is kept): an item like `../../x` in an output must refuse the workflow, not fail
    # its job once recorded
    varied = any(m["word"] == "item" or m["param"] for text in _strings(spec) for m in PLACEHOLDER.finditer(text))
    for index in range(size if varied else 1):
        element = params(root, index)
        try:
            parse(render(spec, element | {"index": index}, lambda step, output: [f"/{step}/{output}"]))
        except SpecError as exc:
            at = f" (element {index}: {_shown(element)})" if index else ""
            raise WorkflowError(f"{where}.spec.{exc.field}", exc.message + at) from None
    return Step(name, spec, needs, size, fan)


def _shown(element: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in element.items())


def _size(where: str, body: dict[str, Any], built: dict[str, Step]) -> int:
    """How many elements a step will have, found before any is built (a `seeds` count or a
    sweep's product is a number in the message, not a size the message paid for)."""
    if "map" in body:
        items = body["map"]
        size = len(items) if isinstance(items, list) else 1
        key = "map"
    elif "sweep" in body:
        grid = body["sweep"]
        size = 1
        for values in (grid.values() if isinstance(grid, Mapping) else ()):
            size *= len(values) if isinstance(values, list) else 1
            if size > MAX_ELEMENTS:
                break
        key = "sweep"
    elif "seeds" in body:
        count = body["seeds"]
        size = count if isinstance(count, int) and not isinstance(count, bool) else 1
        key = "seeds"
    elif "foreach" in body:
        return built[body["foreach"]].size
    else:
        return 1
    if size > MAX_ELEMENTS:
        raise WorkflowError(f"{where}.{key}", f"has {size} elements, more than {MAX_ELEMENTS}")
    return max(size, 1)


def _fan(where: str, body: dict[str, Any], built: dict[str, Step]) -> tuple[int, dict[str, Any]]:
    """The step's size and what its elements are computed from, its values checked (its
    size was checked by _size before)."""
    if "map" in body:
        items = body["map"]
        if not isinstance(items, list) or not items:
            raise WorkflowError(f"{where}.map", "must be a non-empty list of values")
        if not all(isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items):
            raise WorkflowError(f"{where}.map", "each value must be a string or a number")
        return len(items), {"map": [str(item) for item in items]}
    if "sweep" in body:
        grid = body["sweep"]
        if not isinstance(grid, Mapping) or not grid:
            raise WorkflowError(f"{where}.sweep", "must name at least one parameter and its values")
        for param, values in grid.items():
            if not isinstance(param, str) or not PARAM_NAME.match(param):
                raise WorkflowError(f"{where}.sweep", f"{param!r} is not a parameter name")
            if not isinstance(values, list) or not values:
                raise WorkflowError(f"{where}.sweep.{param}", "has no values")
            if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
                raise WorkflowError(f"{where}.sweep.{param}", "each value must be a string or a number")
        size = 1
        for values in grid.values():
            size *= len(values)
        return size, {"sweep": {name: [str(v) for v in values] for name, values in grid.items()}}
    if "seeds" in body:
        count = body["seeds"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise WorkflowError(f"{where}.seeds", "must be a whole number of seeds, at least 1")
        return count, {"seeds": count, "salt": secrets.token_hex(16)}
    if "foreach" in body:
        source = built[body["foreach"]]
        return source.size, {"foreach": source.fan.get("foreach", source.name)}
    return 1, {}


def params(fan: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The parameters of element `index` of a step whose elements are computed from `fan`
    (a foreach step's: its source's fan): what its `${item}`, `${params.*}` and `${seed}`
    become. The same on every pass: nothing here is drawn, a seed is derived from the salt
    drawn once at submit."""
    if "map" in fan:
        return {"item": fan["map"][index]}
    if "sweep" in fan:
        chosen: dict[str, str] = {}
        for name, values in reversed(list(fan["sweep"].items())):  # the last varies fastest
            index, at = divmod(index, len(values))
            chosen[name] = values[at]
        return {"params": {name: chosen[name] for name in fan["sweep"]}}
    if "seeds" in fan:
        digest = hashlib.sha256(f"{fan['salt']}/{index}".encode()).digest()
        return {"seed": str(int.from_bytes(digest[:4], "big") % 2**31)}
    return {}


def _check_placeholders(where: str, spec: Mapping[str, Any], sample: Mapping[str, Any]) -> None:
    for text in _strings(spec):
        for m in PLACEHOLDER.finditer(text):
            if m["word"] in ("item", "seed") and m["word"] not in sample:
                raise WorkflowError(f"{where}.spec", f"uses ${{{m['word']}}}, which only a step with "
                                                     f"{'map' if m['word'] == 'item' else 'seeds'} has")
            if m["param"] and m["param"] not in sample.get("params", {}):
                raise WorkflowError(f"{where}.spec", f"uses ${{params.{m['param']}}}, which its sweep does not name")


def render(spec: Mapping[str, Any], element: Mapping[str, Any], resolve: Resolver) -> dict[str, Any]:
    """One element's job spec: its placeholders replaced, each value shell-quoted in the
    command (an item `bob; touch x` is one word, never a second command; a plain word or
    number is left as it is). An output of a reduced step is every element's path (quoted
    too; an `inputs` entry that is only such a reference becomes one entry per path). Every
    path a reference became is one of the job's inputs (its provenance, and the key of its
    reuse)."""
    used: list[str] = []

    def fill(text: str, quote: bool) -> str:
        def one(m: re.Match[str]) -> str:
            if m["step"]:
                paths = resolve(m["step"], m["output"])
                used.extend(paths)
                return " ".join(shlex.quote(p) for p in paths) if quote else " ".join(paths)
            value = str(element["params"][m["param"]] if m["param"] else element[m["word"]])
            return shlex.quote(value) if quote else value
        return PLACEHOLDER.sub(one, text)

    result = dict(spec)
    if isinstance(spec.get("command"), str):
        result["command"] = fill(spec["command"], True)
    if isinstance(spec.get("inputs"), list):
        inputs: list[Any] = []
        for entry in spec["inputs"]:
            whole = PLACEHOLDER.fullmatch(entry) if isinstance(entry, str) else None
            if whole is not None and whole["step"]:
                inputs += resolve(whole["step"], whole["output"])
            else:
                inputs.append(fill(entry, False) if isinstance(entry, str) else entry)
        result["inputs"] = inputs
    if isinstance(spec.get("outputs"), list):
        result["outputs"] = [fill(o, False) if isinstance(o, str) else o for o in spec["outputs"]]
    if isinstance(spec.get("environment"), Mapping):
        result["environment"] = {k: fill(v, False) if isinstance(v, str) else v
                                 for k, v in spec["environment"].items()}
    if used:
        listed: list[Any] = result["inputs"] if isinstance(result.get("inputs"), list) else []
        result["inputs"] = list(dict.fromkeys([*listed, *used]))
    return result
