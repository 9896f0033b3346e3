"""The published JSON Schemas: the job spec, the job event and the job_conf.

Each is generated from the pydantic models that check (spec, job_conf) or describe (event)
it, so the schema and the code cannot drift apart:
`galaxy-tasks schema spec|event|job-conf` prints one, docs/schemas/ holds them as files
(tests/unit/test_schemas.py fails when they are stale: `galaxy-tasks schema --write docs/schemas`
writes them again), and docs/schemas.md says what each one cannot say.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from galaxy_tasks.events import EventModel
from galaxy_tasks.routing import job_conf_model
from galaxy_tasks.spec import SpecModel

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _spec() -> type[BaseModel]:

    return SpecModel


def _event() -> type[BaseModel]:

    return EventModel


def _job_conf() -> type[BaseModel]:

    return job_conf_model()


MODELS: dict[str, Callable[[], type[BaseModel]]] = {"spec": _spec, "event": _event, "job-conf": _job_conf}


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) named `name` (a key of MODELS)."""
    body = MODELS[name]().model_json_schema()
    return {"$schema": DIALECT, "$id": f"{name}.schema.json", **body}


def text(name: str) -> str:
    return json.dumps(schema(name), indent=2, sort_keys=False) + "\n"


def write(directory: Path) -> list[Path]:
    """Write every schema as `<name>.schema.json` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in MODELS:
        path = directory / f"{name}.schema.json"
        path.write_text(text(name))
        written.append(path)
    return written
