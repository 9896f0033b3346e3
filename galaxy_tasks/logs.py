"""Structured logs: one `key=value` line per event, with secrets redacted and control
characters escaped.

Connection URLs carry passwords; `redact` is applied to every value logged through
`event()` and by the `RedactingFilter` on every handler the project installs. A value may
come from a client (a tool id, a reason a job wrote): its newlines and other control
characters are escaped, so it cannot forge a log line of its own.
"""
from __future__ import annotations

import logging
import re

#: a URL runs to the next blank: a password may hold quotes and brackets (`it's`, `<pw>`)
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>\S+)")
#: a query parameter whose value is a secret (libpq's `password` and `sslpassword` among them)
_SECRET_PARAMETER = re.compile(r"(?P<name>(?:^|[?&;])(?:\w*pass(?:word|wd)|pwd|\w*secret|\w*token|api_?key)=)"
                               r"[^&;#\s]*", re.I)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_NOT_LAYOUT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def redact(text: str) -> str:
    """Hide the password of every URL in `text` (`redis://:secret@h` -> `redis://:***@h`),
    wherever it is: in the userinfo (up to the last `@`, so `@` and `/` inside it stay
    hidden) or in a query parameter (`?password=...`)."""
    return _URL.sub(_redact_url, text)


def _redact_url(match: re.Match[str]) -> str:
    rest = match["rest"]
    query_at = rest.find("?")
    authority_and_path, query = (rest, "") if query_at < 0 else (rest[:query_at], rest[query_at:])
    at = authority_and_path.rfind("@")
    if at >= 0 and ":" in authority_and_path[:at]:
        user = authority_and_path[:authority_and_path.index(":")]
        if "/" not in user:
            authority_and_path = f"{user}:***{authority_and_path[at:]}"
    return match["scheme"] + authority_and_path + _SECRET_PARAMETER.sub(lambda m: m["name"] + "***", query)


def escape_controls(text: str) -> str:
    """`\n` for a newline, `\x1b` for an escape, ...: one log line stays one line."""
    return _CONTROL.sub(lambda m: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(m[0], f"\\x{ord(m[0]):02x}"),
                        text)


def printable(text: str) -> str:
    """Text for an operator's terminal: lines and tabs kept, every other control character
    escaped as in the logs, so a job's output or a tool id cannot move the cursor, clear
    the screen or write the clipboard (OSC 52) of whoever reads it."""
    return _CONTROL_NOT_LAYOUT.sub(lambda m: "\\r" if m[0] == "\r" else f"\\x{ord(m[0]):02x}", text)


def _value(value: object) -> str:
    text = redact(str(value))
    if not text or any(c in text for c in ' ="\\') or _CONTROL.search(text):
        return '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
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
