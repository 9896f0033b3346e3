"""What the submitter's host runs for the rsync transfer (the digests of inputs, files and
directories; the commit that moves what came home into place), run by a real `sh` here with
the ssh hop left out: `ssh` is a program that runs the remote command locally. The real hop
is tests/integration/test_staging.py's."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from galaxy_tasks.staging.rsync import DIRECTORY, STAGE_OUT, Rsync
from galaxy_tasks.staging.settings import StagingSettings


@pytest.fixture
def here(tmp_path: Path) -> Rsync:
    ssh = tmp_path / "ssh-here"
    ssh.write_text('#!/bin/sh\nfor last; do :; done\nexec sh -c "$last"\n')  # the remote command, run here
    ssh.chmod(0o755)
    return Rsync(StagingSettings(host="submitter", identity_file="/k", root=str(tmp_path / "staged"),
                                 max_bytes=1 << 20, ssh=str(ssh)))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_staging_digests_list_a_directory_its_files_and_directories_any_name(here: Rsync, tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "sub dir" / "empty").mkdir(parents=True)
    (tree / "sub dir" / "odd\nname txt").write_bytes(b"odd")
    (tree / "a").write_bytes(b"")
    single = tmp_path / "single.dat"
    single.write_bytes(b"one")
    found = here.digests([str(tree), str(single), str(tmp_path / "gone")])
    assert found == {
        str(tree): DIRECTORY, f"{tree}/sub dir": DIRECTORY, f"{tree}/sub dir/empty": DIRECTORY,
        f"{tree}/sub dir/odd\nname txt": (3, _sha(b"odd")), f"{tree}/a": (0, _sha(b"")),
        str(single): (3, _sha(b"one")), str(tmp_path / "gone"): None,
    }


def test_staging_commit_moves_whole_files_to_their_places_and_names_the_others(here: Rsync, tmp_path: Path):
    job = tmp_path / "job"
    staged = job / STAGE_OUT
    (staged / "working").mkdir(parents=True)
    (staged / "inputs" / "g").mkdir(parents=True)
    (staged / "working" / "out.txt").write_bytes(b"out")
    (staged / "inputs" / "g" / "data.dat").write_bytes(b"data")
    (staged / "inputs" / "g" / "bad.dat").write_bytes(b"changed on the way")
    elsewhere = tmp_path / "galaxy" / "objects"
    pending = here.commit(str(job), [
        ("working/out.txt", _sha(b"out"), "working/out.txt"),
        ("inputs/g/data.dat", _sha(b"data"), str(elsewhere / "data.dat")),
        ("inputs/g/bad.dat", _sha(b"as it left"), str(elsewhere / "bad.dat")),
    ], last=True)
    assert pending == ["inputs/g/bad.dat"]
    assert (job / "working" / "out.txt").read_bytes() == b"out"
    assert (elsewhere / "data.dat").read_bytes() == b"data"
    assert not (elsewhere / "bad.dat").exists() and not (staged / "inputs" / "g" / "bad.dat").exists()
    assert staged.is_dir()  # not every file arrived whole: the staging area stays
