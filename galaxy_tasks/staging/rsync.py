"""Files between a worker and the submitter's host: rsync over ssh carries the bytes
(streamed, resumable), and the submitter's side checks with `sha256sum`, so a file is
taken only with the size and hash it had where it came from.

Needs on the worker: rsync and ssh, a private key (`identity_file`) and the submitter's host
key; on the submitter's host: sshd, rsync, POSIX sh and coreutils, the key authorized for a
user who may read the inputs and write the jobs directory.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from galaxy_tasks.errors import StagingError, StagingUnreachable
from galaxy_tasks.staging.settings import StagingSettings

#: seconds without progress before rsync gives up (a stalled connection)
IO_TIMEOUT_S = 120
#: seconds a command on the submitter's host may take (it hashes the files it is given)
COMMAND_TIMEOUT_S = 3600
#: seconds an idle shared ssh connection stays open
CONTROL_PERSIST_S = 60
#: what ssh and rsync say when the network, not the set-up, is at fault (lower case): such a
#: failure is tried again later; any other (a refused key, a changed host key) fails the job
UNREACHABLE = ("connection refused", "connection timed out", "operation timed out", "no route to host",
               "network is unreachable", "connection reset", "connection closed", "broken pipe",
               "kex_exchange_identification", "ssh_exchange_identification", "timeout in data send/receive")

# prints a NUL-ended record for each path it is given: "F <size> <sha256> <path>" for a
# regular file (a link is followed: an input is whatever its path names on the submitter's
# host), for a directory the same of each file below it and "D - - <path>" of it and each
# directory below it, "missing - - <path>" for anything else
_DIGESTS = r"""one='for f; do s=$(stat -L -c %s -- "$f") && h=$(sha256sum < "$f") || exit 3
printf "F %s %s %s\0" "$s" "${h%% *}" "$f"; done'
for a; do
  if [ -d "$a" ]; then
    find -L "$a" \( -type d -printf 'D - - %p\0' \) -o \( -type f -exec sh -c "$one" sh {} + \) || exit 3
  elif [ -f "$a" ]; then sh -c "$one" sh "$a" || exit 3
  else printf 'missing - - %s\0' "$a"; fi
done"""

#: what `digests` says of a directory
DIRECTORY = (-1, "")

#: where files sent home wait, inside the submitter's job directory, until they are checked
STAGE_OUT = ".stage-out"

# in the job directory $1: each file of .stage-out/ whose sha256 is the one given moves to its
# place (relative to $1, or absolute); each that is not is removed and its name printed.
# $2 = 1: then .stage-out/ goes, if every file was whole
_COMMIT = r"""cd -- "$1" || exit 3; clear=$2; bad=; shift 2
while [ $# -gt 2 ]; do
  f=$1; want=$2; to=$3; shift 3
  got=$(sha256sum < ".stage-out/$f" 2>/dev/null) || got=
  if [ "${got%% *}" = "$want" ]; then
    mkdir -p -- "$(dirname -- "$to")" && mv -f -- ".stage-out/$f" "$to" || exit 4
  else rm -f -- ".stage-out/$f"; printf '%s\n' "$f"; bad=1; fi
done
if [ "$clear" = 1 ] && [ -z "$bad" ]; then rm -rf .stage-out; fi"""


class Rsync:
    """The submitter's host as one worker reaches it."""

    def __init__(self, settings: StagingSettings) -> None:
        self.settings = settings
        self.target = f"{settings.user}@{settings.host}" if settings.user else settings.host
        self.control_dir = _control_dir()

    def bound(self, job_id: str, credentials: Mapping[str, str]) -> Rsync:
        """The same transfer for any job: ssh's key is the destination's, not the job's."""
        return self

    def ssh_command(self) -> list[str]:
        """ssh with the destination's key only, in batch mode, host keys always checked."""
        s = self.settings
        command = [s.ssh, "-i", s.identity_file, "-p", str(s.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                   "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={s.connect_timeout_s}"]
        if s.known_hosts:
            command += ["-o", f"UserKnownHostsFile={s.known_hosts}"]
        if self.control_dir is not None:  # one connection for the many short commands of each job
            key = hashlib.sha256(f"{s.root}\0{s.identity_file}".encode()).hexdigest()[:12]
            command += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/{key}-%C",
                        "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
        return command

    def digests(self, paths: Sequence[str]) -> dict[str, tuple[int, str] | None]:
        """Each file's size and sha256 on the submitter's host; a directory is DIRECTORY,
        and each file and directory below it is there too (None: no such file)."""
        if not paths:
            return {}
        found: dict[str, tuple[int, str] | None] = {}
        for record in self._remote(_DIGESTS, *paths).split("\0")[:-1]:
            kind, size, digest, path = (record.split(" ", 3) + ["", "", ""])[:4]
            if kind == "F" and size.isdigit() and len(digest) == 64:
                found[path] = (int(size), digest)
            elif kind == "D":
                found[path] = DIRECTORY
            else:
                found[path] = None
        unanswered = [path for path in paths if path not in found]
        if unanswered:
            raise StagingError(f"the submitter's host did not answer for {', '.join(unanswered)}")
        return found

    def fetch(self, paths: Sequence[str], into: Path) -> None:
        """The submitter's files (absolute paths) into `into`, each at its own path below it."""
        self._rsync([p.lstrip("/") for p in paths], f"{self.target}:/", f"{into}/", copy_links=True)

    def send(self, root: Path, relatives: Sequence[str], remote_dir: str) -> None:
        """Files below the local `root` to the same relative paths below `remote_dir`."""
        self._rsync(relatives, f"{root}/", f"{self.target}:{remote_dir}/")

    def commit(self, remote_root: str, files: Sequence[tuple[str, str, str]], last: bool = False) -> list[str]:
        """Move each (path relative to `remote_root`/.stage-out, sha256, its place: relative to
        `remote_root` or absolute) into place if it arrived whole; the paths that did not
        (removed, never taken for the file). `last`: then .stage-out itself goes, if every
        file was whole."""
        parts = [part for triple in files for part in triple]
        return self._remote(_COMMIT, remote_root, "1" if last else "0", *parts).splitlines()

    def _remote(self, script: str, *args: str) -> str:
        command = " ".join(["sh", "-c", shlex.quote(script), "sh", *map(shlex.quote, args)])
        return self._run([*self.ssh_command(), "--", self.target, command], None)

    def _rsync(self, relatives: Sequence[str], source: str, target: str, copy_links: bool = False) -> None:
        # no -l: a link the job left is not carried (nothing outside a job's files leaves the worker)
        command = [self.settings.rsync, "--times", "--protect-args", "--from0", "--files-from=-",
                   f"--timeout={IO_TIMEOUT_S}", "-e", shlex.join(self.ssh_command())]
        if copy_links:
            command.append("--copy-links")
        self._run([*command, source, target], "\0".join(relatives) + "\0")

    @staticmethod
    def _run(command: list[str], stdin: str | None) -> str:
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                                  env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StagingError(f"{command[0]} failed: {exc}") from None
        if done.returncode != 0:
            said = " ".join(done.stderr.split())[-500:]
            failed = f"{Path(command[0]).name} exited with {done.returncode}: {said}"
            if any(words in said.lower() for words in UNREACHABLE):
                raise StagingUnreachable(f"the submitter's host cannot be reached for now: {failed}")
            raise StagingError(failed)
        return done.stdout


def _control_dir() -> Path | None:
    """This user's directory for ssh's shared connections (None, and no sharing, if a
    directory at that path is not this user's alone)."""
    where = Path(tempfile.gettempdir()) / f"galaxy-tasks-ssh-{os.getuid()}"
    try:
        where.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(where)
    except OSError:
        return None
    mine = stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o077
    return where if mine else None
