"""The configuration reference cannot drift from the code: every environment variable and
every param of every registered runner is documented, and every documented one exists."""
from __future__ import annotations

import re
from pathlib import Path

from galaxy_tasks import config
from galaxy_tasks.runners import REGISTRY, runner_class
from galaxy_tasks.runners.params import describe

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_environment_variable_is_documented():
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"`GALAXY_TASKS_([A-Z_]+)`", text))
    assert set(config.VARIABLES) <= documented, set(config.VARIABLES) - documented
    assert documented <= set(config.VARIABLES), documented - set(config.VARIABLES)


def test_every_runner_param_is_documented_with_its_default():
    text = (DOCS / "configuration.md").read_text()
    for name in REGISTRY:
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", section, re.M))
        declared = {param: default for param, _, default, _ in describe(runner_class(name).Params)}
        assert set(rows) == set(declared), (name, set(rows) ^ set(declared))
        for param, default in declared.items():
            shown = "(none)" if default in (None, "") else f"`{default}`"
            assert rows[param].strip() == shown, (name, param, rows[param], shown)


def test_the_readme_links_only_pages_that_exist():
    readme = (DOCS.parent / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (DOCS.parent / link).exists(), link
