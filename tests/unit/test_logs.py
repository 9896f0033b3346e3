"""Secrets never reach the logs: URL passwords are redacted in events and in any record."""
from __future__ import annotations

import io
import logging

import pytest

from galaxy_tasks.logs import RedactingFilter, event, install, redact


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://:pw@h", "redis://:***@h"),
        ("redis://:pw@redis.example.org:6379/0", "redis://:***@redis.example.org:6379/0"),
        ("amqp://user:pw@h//", "amqp://user:***@h//"),
        ("amqp://guest:s3cr%21t@rabbit:5672/vhost", "amqp://guest:***@rabbit:5672/vhost"),
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg2://galaxy:pa$$w0rd@db:5432/galaxy", "postgresql+psycopg2://galaxy:***@db:5432/galaxy"),
        ("rediss://:p:w@h", "rediss://:***@h"),
    ],
)
def test_redact_hides_the_password(url, expected):
    assert redact(url) == expected


@pytest.mark.parametrize(
    "text",
    ["redis://h:6379/0", "sqlite:////tmp/x.sqlite", "postgresql://u@h/db", "memory://", "plain text: a@b",
     "local:///", "drmaa://-l h_rt=1:00/"],
)
def test_redact_leaves_urls_without_password_alone(text):
    assert redact(text) == text


def test_redact_every_url_in_a_text():
    text = "broker=redis://:one@r db=postgresql://u:two@p/db result=amqp://x:three@q//"
    cleaned = redact(text)
    assert cleaned == "broker=redis://:***@r db=postgresql://u:***@p/db result=amqp://x:***@q//"


def test_redact_password_containing_at_sign():
    assert "ss" not in redact("postgresql://u:p@ss@h/db").split("@h/")[0]


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("galaxy_tasks.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


PASSWORDS = {
    "broker": "redis://:hunter2@redis:6379/0",
    "result": "amqp://user:sw0rdfish@rabbit//",
    "database": "postgresql://galaxy:tr0ub4dor@db/galaxy",
}


def test_event_never_logs_a_password(captured):
    logger, stream = captured
    event(logger, "worker_start", **PASSWORDS, note="connecting to redis://:hunter2@redis")
    line = stream.getvalue()
    assert line.startswith("event=worker_start ")
    for secret in ("hunter2", "sw0rdfish", "tr0ub4dor"):
        assert secret not in line
    assert "broker=redis://:***@redis:6379/0" in line
    assert 'note="connecting to redis://:***@redis"' in line


def test_event_format(captured):
    logger, stream = captured
    event(logger, "state_change", job_id="j1", to="ok", reason='said "hi" there', skipped=None, empty="")
    assert stream.getvalue().strip() == 'event=state_change job_id=j1 to=ok reason="said \\"hi\\" there" empty=""'


def test_event_respects_the_level(captured):
    logger, stream = captured
    logger.setLevel(logging.WARNING)
    event(logger, "quiet", level=logging.INFO, x=1)
    assert stream.getvalue() == ""
    event(logger, "loud", level=logging.ERROR, x=1)
    assert "event=loud x=1" in stream.getvalue()


def test_redacting_filter_redacts_a_record():
    record = logging.LogRecord("celery", logging.INFO, __file__, 1,
                               "Connected to %s, results in %s", ("redis://:hunter2@r:6379//", "db+postgresql://u:tr0ub4dor@p/x"), None)
    assert RedactingFilter().filter(record) is True
    message = record.getMessage()
    assert "hunter2" not in message and "tr0ub4dor" not in message
    assert message == "Connected to redis://:***@r:6379//, results in db+postgresql://u:***@p/x"


def test_redacting_filter_keeps_clean_records_untouched():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    RedactingFilter().filter(record)
    assert record.msg == "job %s done" and record.args == ("j1",)


def test_installed_filter_redacts_foreign_loggers():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install("INFO")
        install("INFO")  # twice: still one filter
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        logging.getLogger("celery.worker").warning("broker at %s", "amqp://user:sw0rdfish@rabbit//")
        assert "sw0rdfish" not in stream.getvalue()
        assert "amqp://user:***@rabbit//" in stream.getvalue()
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("url", [
    "redis://:pa/ss@host:6379/0",
    "amqp://guest:gu/e@st@rabbit:5672//",
    "postgresql://host/db?user=u&password=hunter2",
    "postgresql://u@host/db?sslmode=require&password=hunter2&x=1",
    "redis://host:6379/0?password=hunter2",
])
def test_redact_finds_the_password_wherever_the_url_keeps_it(url):
    cleaned = redact(url)
    assert "hunter2" not in cleaned and "pa/ss" not in cleaned and "gu/e" not in cleaned, cleaned
    assert "***" in cleaned


def test_a_value_with_a_newline_cannot_forge_a_log_line(caplog):
    logger = logging.getLogger("galaxy_tasks.test_forge")
    with caplog.at_level(logging.INFO, logger="galaxy_tasks.test_forge"):
        event(logger, "submit_refused", tool_id="bwa\nevent=state_change job_id=x to=ok\r\x1b[2K")
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert message.count("event=") == 2 and '\\nevent=state_change' in message  # the second is inside a quoted value


@pytest.mark.parametrize("url", [
    "postgresql://galaxy:it's@db/galaxy",
    'amqp://guest:say"hi"@rabbit//',
    "redis://:<hunter2>@h:6379/0",
    "postgresql://u@db/galaxy?sslmode=verify-full&sslpassword=hunter2",
    "postgresql://u@db/galaxy?sslpassword=hunter2&sslmode=require",
])
def test_redact_hides_passwords_with_quotes_and_brackets_and_libpq_sslpassword(url):
    cleaned = redact(f"connecting to {url} now")
    for secret in ("it's", 's"', 'say"hi"', "<hunter2>", "hunter2"):
        assert secret not in cleaned, cleaned
    assert "***" in cleaned and cleaned.endswith(" now")


def test_a_worker_redacts_what_any_library_logs_once_celery_has_set_up_its_logging():
    """Celery installs a worker's handlers after the app is imported; the worker's hooks
    then add the redacting filter to them."""
    from galaxy_tasks.edge import hooks  # noqa: F401 - connects the worker's signal handlers
    from galaxy_tasks.edge.app import app

    root = logging.getLogger()
    before, level = root.handlers[:], root.level
    stream = io.StringIO()
    root.handlers = []  # as in a worker process, before Celery sets up its logging
    app.log.already_setup = False
    try:
        app.log.setup_logging_subsystem(loglevel="INFO", logfile=stream, colorize=False)
        logging.getLogger("sqlalchemy.pool").warning("lost %s", "postgresql://gt:sw0rdfish@db/gt")
    finally:
        root.handlers = before
        root.setLevel(level)
        app.log.already_setup = False
    assert "sw0rdfish" not in stream.getvalue()
    assert "postgresql://gt:***@db/gt" in stream.getvalue()
