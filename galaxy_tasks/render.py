"""What the command line shows, through rich: tables, and the live progress of jobs.

On a terminal a table gets rich's box and colours and a set of jobs a live progress bar
with the count in each state; anywhere else (a pipe, a file, a test) a table is plain
aligned text and progress is one plain line per state change, so what scripts read of
`list`, `run` or `wait` does not depend on rich's styling.
"""
from __future__ import annotations

import io
import sys
from types import TracebackType
from typing import Any, Iterable, Mapping, Sequence, TextIO

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from galaxy_tasks.logs import escape_controls
from galaxy_tasks.states import TERMINAL, JobState

#: a rule of '-' under the header and nothing else: plain text that aligns in any font
PLAIN = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)
#: the order states are counted in, the lifecycle's
ORDER = [state.value for state in JobState]
STYLES = {"ok": "green", "error": "red", "deleted": "yellow", "running": "cyan", "refused": "magenta",
          "unknown": "magenta"}
_TERMINAL = frozenset(state.value for state in TERMINAL)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, a rule under the header: plain text."""
    cells = [[escape_controls(str(c)) for c in row] for row in rows]
    widths = [max([cell_len(h)] + [cell_len(row[i]) for row in cells]) for i, h in enumerate(header)]
    grid = _table([_escape(h) for h in header], [[_escape(c) for c in row] for row in cells], PLAIN)
    buffer = io.StringIO()
    Console(file=buffer, width=sum(widths) + 2 * len(widths) + 2, color_system=None, force_terminal=False,
            legacy_windows=False, highlight=False).print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO | None = None,
                state_column: str | None = "state") -> None:
    """A table on `out`: rich's, with states coloured, on a terminal; `table()` elsewhere."""
    out = out or sys.stdout
    if not is_terminal(out):
        print(table(header, rows), file=out)
        return
    index = list(header).index(state_column) if state_column is not None and state_column in header else -1
    cells = [[f"[{STYLES[str(c)]}]{c}[/]" if i == index and str(c) in STYLES else _escape(escape_controls(str(c)))
              for i, c in enumerate(row)] for row in rows]
    Console(file=out, highlight=False).print(_table([_escape(h) for h in header], cells, box.SIMPLE_HEAD,
                                                   header_style="bold"))


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """`name  value` lines, the names aligned (`galaxy-tasks status`)."""
    texts = [(name, escape_controls(str(value))) for name, value in pairs]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for name, value in texts:
        grid.add_row(name, _escape(value))
    width = max([cell_len(n) for n, _ in texts] or [1]) + max([cell_len(v) for _, v in texts] or [1]) + 2
    buffer = io.StringIO()
    Console(file=buffer, width=max(width, 20), color_system=None, force_terminal=False, legacy_windows=False,
            highlight=False).print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], style: box.Box, header_style: str = "") -> Table:
    grid = Table(box=style, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
                 header_style=header_style)
    for name in header:
        grid.add_column(name, overflow="fold")
    for row in rows:
        grid.add_row(*row)
    return grid


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def counts_text(states: Mapping[str, str], styled: bool = False) -> str:
    """`queued 1  running 2  ok 3`: how many of the jobs are in each state, in the
    lifecycle's order, the states no job is in left out."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    order = ORDER + sorted(set(counts) - set(ORDER))
    return "  ".join(f"[{STYLES[s]}]{s} {counts[s]}[/]" if styled and s in STYLES else f"{s} {counts[s]}"
                     for s in order if counts.get(s))


class JobProgress:
    """The progress of a set of jobs, fed by their job events.

    `with JobProgress(out, live=...) as progress:` then `progress.start(states)` with each
    job's state when following begins, `progress.event(item)` with each job event heard,
    `progress.line(text)` for a line above the bar. Live (on a terminal): a rich progress
    bar of the jobs that ended, with the count in each state, lines printed above it.
    Otherwise the lines are printed plainly. `changes` says which state changes get a line
    of their own (`running    1a2b3c4d  tool`): "all", "ends" (terminal states) or "none"."""

    def __init__(self, out: TextIO, *, live: bool, changes: str = "all", title: str = "jobs") -> None:
        assert changes in ("all", "ends", "none"), changes
        self.out = out
        self.live = live
        self.changes = changes
        self.title = title
        self.states: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        if self.live:
            self._progress = Progress(
                SpinnerColumn(finished_text="[green]done"), TextColumn("{task.description}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("ended"), TimeElapsedColumn(), TextColumn("{task.fields[counts]}"),
                console=Console(file=self.out, highlight=False), transient=False, refresh_per_second=8)
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=None, counts="")
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._progress is not None:
            self._redraw()
            self._progress.stop()

    def line(self, text: str) -> None:
        text = escape_controls(text)
        if self._progress is not None:
            self._progress.console.print(_escape(text), highlight=False)
        else:
            print(text, file=self.out, flush=True)

    def start(self, states: Mapping[str, str]) -> None:
        """Each job's state as following begins (their rows)."""
        self.states.update(states)
        self._redraw()

    def event(self, item: Mapping[str, Any]) -> None:
        """A job event: the job's state changes if it is newer than the last one applied."""
        job_id, state, seq = item.get("job_id"), item.get("state"), item.get("seq")
        if not isinstance(job_id, str) or not isinstance(state, str):
            return
        if isinstance(seq, int) and seq <= self._seq.get(job_id, -1):
            return  # a duplicate, or older than what we know
        if isinstance(seq, int):
            self._seq[job_id] = seq
        if self.states.get(job_id) == state:
            return
        self.states[job_id] = state
        if self.changes == "all" or (self.changes == "ends" and state in _TERMINAL):
            self.line(f"{state:10} {job_id[:8]}  {item.get('tool_id') or ''}".rstrip())
        self._redraw()

    @property
    def ended(self) -> int:
        return sum(1 for state in self.states.values() if state in _TERMINAL)

    def _redraw(self) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, total=len(self.states), completed=self.ended,
                              counts=counts_text(self.states, styled=True))
        self._progress.refresh()
