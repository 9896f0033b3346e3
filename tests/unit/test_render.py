"""What the command line shows: tables (rich's on a terminal, plain text elsewhere) and the
progress of jobs, moved by job events only."""
from __future__ import annotations

import io

from galaxy_tasks.render import JobProgress, counts_text, fields, print_table, table


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_plain_table_is_aligned_with_a_rule_and_no_trailing_blanks():
    text = table(["id", "state", "reason"], [["a1", "ok", ""], ["b22222", "error", "exit code 3"]])
    lines = text.splitlines()
    assert lines[0].split() == ["id", "state", "reason"]
    assert set(lines[1]) == {"-"}
    assert lines[2] == "a1      ok"
    assert lines[3] == "b22222  error  exit code 3"
    assert lines[0].index("state") == lines[3].index("error")


def test_a_long_cell_is_not_wrapped_in_plain_text():
    reason = "x" * 500
    assert table(["id", "reason"], [["a", reason]]).splitlines()[2].endswith(reason)


def test_markup_in_a_cell_is_shown_as_it_is():
    assert "[bold]tool[/bold]" in table(["tool"], [["[bold]tool[/bold]"]])
    out = Terminal()
    print_table(["tool", "state"], [["[red]x[/red]", "ok"]], out)
    assert "[red]x[/red]" in out.getvalue()


def test_print_table_is_plain_off_a_terminal_and_rich_on_one():
    rows = [["a", "ok"], ["b", "error"]]
    plain = io.StringIO()
    print_table(["id", "state"], rows, plain)
    assert plain.getvalue() == table(["id", "state"], rows) + "\n"
    styled = Terminal()
    print_table(["id", "state"], rows, styled)
    assert "\x1b[" in styled.getvalue() and "─" in styled.getvalue()


def test_fields_align_the_names():
    lines = fields([("id", "j1"), ("destination", "local")]).splitlines()
    assert lines == ["id           j1", "destination  local"]


def test_counts_follow_the_lifecycle_and_leave_out_empty_states():
    assert counts_text({"a": "ok", "b": "running", "c": "queued", "d": "ok"}) == "queued 1  running 1  ok 2"
    assert counts_text({}) == ""


def test_plain_progress_prints_each_change_once_and_ignores_older_events():
    out = io.StringIO()
    with JobProgress(out, live=False) as progress:
        progress.start({"job-aaaaaaaa": "queued", "job-bbbbbbbb": "queued"})
        progress.event({"job_id": "job-aaaaaaaa", "state": "running", "seq": 3, "tool_id": "t"})
        progress.event({"job_id": "job-aaaaaaaa", "state": "running", "seq": 3, "tool_id": "t"})  # duplicate
        progress.event({"job_id": "job-aaaaaaaa", "state": "queued", "seq": 2, "tool_id": "t"})  # older
        progress.event({"job_id": "job-aaaaaaaa", "state": "ok", "seq": 4, "tool_id": "t"})
        progress.event({"job_id": None, "state": "ok"})  # not a job's event
    assert out.getvalue().splitlines() == ["running    job-aaaa  t", "ok         job-aaaa  t"]
    assert progress.ended == 1 and progress.states == {"job-aaaaaaaa": "ok", "job-bbbbbbbb": "queued"}


def test_progress_that_shows_only_ends_or_nothing():
    out = io.StringIO()
    with JobProgress(out, live=False, changes="ends") as progress:
        progress.start({"j1": "queued"})
        progress.event({"job_id": "j1", "state": "running", "seq": 1})
        progress.event({"job_id": "j1", "state": "error", "seq": 2, "tool_id": "t"})
    assert out.getvalue() == "error      j1  t\n"
    quiet = io.StringIO()
    with JobProgress(quiet, live=False, changes="none") as progress:
        progress.event({"job_id": "j1", "state": "ok", "seq": 2})
    assert quiet.getvalue() == ""


def test_live_progress_draws_a_bar_with_the_counts():
    out = Terminal()
    with JobProgress(out, live=True) as progress:
        progress.start({"j1": "running", "j2": "running"})
        progress.event({"job_id": "j1", "state": "ok", "seq": 5, "tool_id": "t"})
    screen = out.getvalue()
    assert "1/2" in screen and "running 1" in screen and "ok 1" in screen
