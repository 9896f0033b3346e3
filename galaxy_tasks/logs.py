"""Structured logs: one `key=value` line per event, with secrets redacted.

Connection URLs carry passwords; `redact` is applied to every value logged through
`event()` and by the `RedactingFilter` on every handler the project installs.
"""
from __future__ import annotations

import logging
import re

# the password runs to the last "@" before the host: a raw "@" inside it stays hidden
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^/\s]+)@")


def redact(text: str) -> str:
    """Hide the password of every URL in `text` (`redis://:secret@h` -> `redis://:***@h`)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def _value(value: object) -> str:
    text = redact(str(value))
    if not text or any(c in text for c in ' ="'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one structured event line: `event=<name> key=value ...`."""
    if logger.isEnabledFor(level):
        parts = [f"event={name}"] + [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
        logger.log(level, " ".join(parts))


class RedactingFilter(logging.Filter):
    """Redacts URL passwords in any record, including Celery's own start-up banner."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install(level: str = "INFO") -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    logging.getLogger("galaxy_tasks").setLevel(level)
