"""How a staged job's paths map to the worker's copies: the command's, environment's and
declared files' text rewritten (whole paths only), and what goes home of its returns."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from galaxy_tasks.errors import StagingError
from galaxy_tasks.staging import runner
from galaxy_tasks.staging.runner import _returned, _rewrite, _rewrite_files

MOVES = {"/g/jobs/000/1": "/far/j/inputs/g/jobs/000/1", "/g/objects/a.dat": "/far/j/inputs/g/objects/a.dat"}


@pytest.mark.parametrize("text, rewritten", [
    ("cd /g/jobs/000/1", "cd /far/j/inputs/g/jobs/000/1"),
    ("cat '/g/jobs/000/1/tool_script.sh'", "cat '/far/j/inputs/g/jobs/000/1/tool_script.sh'"),
    ("x=/g/objects/a.dat;", "x=/far/j/inputs/g/objects/a.dat;"),
    # another job's directory, a longer name, the end of a longer path: not these paths
    ("cd /g/jobs/000/10", "cd /g/jobs/000/10"),
    ("cp /g/objects/a.dat.gz .", "cp /g/objects/a.dat.gz ."),
    ("ls /mnt/g/objects/a.dat", "ls /mnt/g/objects/a.dat"),
])
def test_staging_rewrite_replaces_whole_paths_only(text, rewritten):
    assert _rewrite(text, MOVES) == rewritten


def test_staging_rewrite_of_a_path_and_its_prefix_takes_the_longer():
    moves = {"/a": "/x", "/a/b": "/y"}
    assert _rewrite("/a/b/c /a/c", moves) == "/y/c /x/c"


def test_staging_rewritten_files_keep_their_mode_and_bytes_that_are_not_text(tmp_path: Path):
    copy = tmp_path / "inputs" / "g" / "jobs" / "000" / "1"
    (copy / "configs").mkdir(parents=True)
    script = copy / "galaxy_1.sh"
    script.write_bytes(b"#!/bin/sh\ncd /g/jobs/000/1 && cat /g/objects/a.dat \xff\n")
    script.chmod(0o750)
    (copy / "configs" / "c.txt").write_text("in=/g/objects/a.dat\n")
    (copy / "other.txt").write_text("/g/jobs/000/1\n")
    done = _rewrite_files(tmp_path, ["/g/jobs/000/1/galaxy_1.sh", "/g/jobs/000/1/configs", "/g/never"], MOVES)
    assert sorted(done) == ["inputs/g/jobs/000/1/configs/c.txt", "inputs/g/jobs/000/1/galaxy_1.sh"]
    assert script.read_bytes() == (b"#!/bin/sh\ncd /far/j/inputs/g/jobs/000/1 && cat /far/j/inputs/g/objects/a.dat"
                                   b" \xff\n")
    assert script.stat().st_mode & 0o777 == 0o750
    assert (copy / "configs" / "c.txt").read_text() == "in=/far/j/inputs/g/objects/a.dat\n"
    assert (copy / "other.txt").read_text() == "/g/jobs/000/1\n"  # not declared: left as it came


def test_staging_a_file_too_large_to_rewrite_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runner, "MAX_REWRITE_BYTES", 10)
    big = tmp_path / "inputs" / "g" / "big.sh"
    big.parent.mkdir(parents=True)
    big.write_text("x" * 11)
    with pytest.raises(StagingError, match="/g/big.sh is larger than 10 bytes"):
        _rewrite_files(tmp_path, ["/g/big.sh"], MOVES)


def test_staging_returns_are_the_regular_files_left_no_link_followed(tmp_path: Path):
    copy = tmp_path / "inputs" / "g"
    (copy / "jobs" / "sub").mkdir(parents=True)
    (copy / "jobs" / "a.txt").write_text("a")
    (copy / "jobs" / "sub" / "b.txt").write_text("b")
    os.symlink("/etc/passwd", copy / "jobs" / "leak")
    os.symlink("/etc", copy / "jobs" / "leakdir")
    (copy / "out.dat").write_text("o")
    found = _returned(tmp_path, ["/g/jobs", "/g/out.dat", "/g/not-made.dat"])
    assert sorted(found) == ["inputs/g/jobs/a.txt", "inputs/g/jobs/sub/b.txt", "inputs/g/out.dat"]
