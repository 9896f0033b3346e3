"""Counters of the runner plugin, written to a JSON file a test or an operator can read
(the plugin lives inside Galaxy's process; this is how its figures get out)."""
from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path


class Stats:
    def __init__(self, path: str | None) -> None:
        """The file holds this process's counters from its start: a process started again
        under the same name empties it at once (not at its first count, leaving the last
        process's figures to be read as its own until then)."""
        self.path = Path(path) if path else None
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        with self._lock:
            self._write()

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by
            self._write()

    def set(self, name: str, value: int) -> None:
        """A gauge (how many jobs the plugin keeps in memory, say)."""
        with self._lock:
            if self._counts[name] != value:
                self._counts[name] = value
                self._write()

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(self._counts), sort_keys=True))
        os.replace(tmp, self.path)


def read(path: str | Path) -> dict[str, int]:
    """The counters a plugin wrote, or nothing if it has written none yet."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
