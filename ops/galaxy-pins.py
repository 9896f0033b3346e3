"""Print how Galaxy's exact pins and this project's requirements meet in one venv.

Run with the Galaxy venv's Python (ops/galaxy-venv.sh does). The `galaxy` distribution
pins exact versions; this project asks for ranges, so inside Galaxy the plugin meets
Galaxy's versions, which may be older than those this project's own venv resolves to.
"""
from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution, version

OURS = ("celery", "kombu", "redis", "SQLAlchemy", "psycopg2-binary", "alembic", "PyYAML", "pydantic", "rich")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()


def requirements_of(dist: str) -> dict[str, str]:
    try:
        return {_name(r): r for r in distribution(dist).requires or [] if "extra ==" not in r}
    except PackageNotFoundError:
        return {}


def main() -> None:
    galaxy = requirements_of("galaxy")
    ours = requirements_of("galaxy-tasks")
    print(f"{'package':16} {'galaxy pins':28} {'galaxy-tasks asks':28} installed")
    for package in OURS:
        key = package.lower()
        try:
            installed = version(package)
        except PackageNotFoundError:
            installed = "-"
        print(f"{package:16} {galaxy.get(key, '-'):28} {ours.get(key, '-'):28} {installed}")


if __name__ == "__main__":
    main()
