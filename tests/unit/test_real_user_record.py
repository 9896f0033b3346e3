"""The privileged helper's start: it reads its one job row without SQLAlchemy (realuser/record.py),
from the same table the store writes, on a real SQLite file and the real PostgreSQL, and loads
none of the heavy libraries. `pytest -k real_user` selects these."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import pytest

from galaxy_tasks.model import utcnow
from galaxy_tasks.realuser.record import JobRecord, read_job
from galaxy_tasks.store import Store, schema
from tests.support.services import create_database, drop_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> Iterator[str]:
    if request.param == "postgresql":
        url = create_database(template=request.getfixturevalue("database_template"))
    else:
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        schema.upgrade(url)
    yield url
    if request.param == "postgresql":
        drop_database(url)


def test_real_user_record_is_the_row_the_store_wrote(database):
    store = Store(database)
    now = utcnow()
    try:
        assert store.create(dict(id="rec1", tool_id="t", command="true", destination="local", queue="local",
                                 state="running", job_dir="/jobs/rec1", token="abc", run_as="alice", attempt=2,
                                 handover_dir="/galaxy/jobs/000/7", created_at=now, updated_at=now))
        job = store.job("rec1")
    finally:
        store.dispose()
    assert job is not None
    record = read_job(database, "rec1")
    assert record == JobRecord(id="rec1", state="running", job_dir="/jobs/rec1", token="abc", run_as="alice",
                               attempt=2, handover_dir="/galaxy/jobs/000/7")
    assert asdict(record) == {name: getattr(job, name) for name in asdict(record)}  # the model's columns
    assert read_job(database, "nosuchjob") is None


def test_real_user_record_refuses_other_urls_and_never_makes_a_database(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(ValueError, match="could not be read"):
        read_job(f"sqlite:///{missing}", "rec1")
    assert not missing.exists()
    with pytest.raises(ValueError, match="must be sqlite:///PATH or postgresql://"):
        read_job("mysql://db/jobs", "rec1")


def test_real_user_helper_loads_neither_sqlalchemy_nor_pydantic_nor_celery():
    """What made each helper call take about a second and a half on a loaded machine
    (docs/security.md): the helper must start without them."""
    heavy = ("sqlalchemy", "pydantic", "celery", "kombu", "alembic", "psycopg2", "rich")
    probe = ("import sys, galaxy_tasks.realuser.helper; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]", out
