"""Files between a worker and the submitter's host over HTTP(S): the submitter runs
`galaxy-tasks staging-server` (galaxy_tasks/staging/server.py), and the worker needs no login
there, only the job's two tokens, which it reads with the job's row.

The same interface as `Rsync` (digests, fetch, send, commit), bound to one job's tokens.
Every body is streamed in chunks and hashed as it is written, under a temporary name; a
fetch killed midway resumes from what arrived (`Range`), which is checked whole anyway. A
network failure (refused, reset, timed out, a 5xx) is StagingUnreachable, tried again later;
a refusal (401, 403, 404) is StagingError naming the file and the server's reason.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

from galaxy_tasks import jobdir
from galaxy_tasks.errors import StagingError, StagingUnreachable
from galaxy_tasks.staging.rsync import DIRECTORY
from galaxy_tasks.staging.settings import StagingSettings
from galaxy_tasks.staging.tokens import IN, OUT

CHUNK = 1 << 20
#: seconds without progress before a transfer gives up (a stalled connection)
IO_TIMEOUT_S = 120
#: the suffix of a file being fetched (resumed from after a kill)
PART = ".http-part"
API = "/v1/jobs"


class Http:
    """The submitter's staging server as one worker reaches it, for one job once `bound`."""

    def __init__(self, settings: StagingSettings, job_id: str = "", credentials: Mapping[str, str] | None = None,
                 context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.job_id = job_id
        self.credentials = dict(credentials or {})
        url = urllib.parse.urlsplit(settings.url)
        self.secure, self.host, self.port = url.scheme == "https", url.hostname or "", url.port
        self.base = url.path.rstrip("/")
        self.context = context if context is not None or not self.secure else \
            ssl.create_default_context(cafile=settings.ca_file)
        self._expected: dict[str, tuple[int, str] | None] = {}
        self._executable: dict[str, bool] = {}

    def bound(self, job_id: str, credentials: Mapping[str, str]) -> Http:
        """This transfer for one job, with its tokens."""
        if not credentials.get(IN) and not credentials.get(OUT):
            raise StagingError(f"job {job_id} has no staging tokens: it was prepared before its destination "
                               "used `transfer: http`, or by a steps worker without GALAXY_TASKS_STAGING_SECRET")
        return Http(self.settings, job_id, credentials, self.context)

    def digests(self, paths: Sequence[str]) -> dict[str, tuple[int, str] | None]:
        """Each input's size and sha256 on the submitter's host; a directory is DIRECTORY,
        and each file and directory below it is there too (None: no such file)."""
        if not paths:
            return {}
        answer = self._json("GET", "inputs", IN, what="the job's inputs")
        found: dict[str, tuple[int, str] | None] = {}
        for entry in answer.get("inputs", []):
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str) or not any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
                continue
            size, digest = entry.get("size"), entry.get("sha256")
            self._executable[path] = entry.get("executable") is True
            found[path] = DIRECTORY if entry.get("directory") is True else (size, digest) \
                if isinstance(size, int) and size >= 0 and isinstance(digest, str) and len(digest) == 64 else None
        unanswered = [path for path in paths if path not in found]
        if unanswered:
            raise StagingError(f"the staging server does not list {', '.join(unanswered)} among the job's inputs")
        self._expected.update(found)
        return found

    def fetch(self, paths: Sequence[str], into: Path) -> None:
        """The submitter's files (absolute paths) into `into`, each at its own path below it."""
        for path in paths:
            self._fetch_one(path, into / path.lstrip("/"))

    def send(self, root: Path, relatives: Sequence[str], remote_dir: str) -> None:
        """Files below the local `root` to the job's staging area on the submitter's host (the
        server finds the job's directory from its row; `remote_dir` is not sent)."""
        for relative in relatives:
            fd = jobdir.open_beneath(root, relative)  # no link followed: a link is not sent
            if fd is None:
                continue
            with os.fdopen(fd, "rb") as source:
                found = os.fstat(source.fileno())
                headers = {"Content-Length": str(found.st_size), "X-Executable": "1" if found.st_mode & 0o100 else "0"}
                self._request("PUT", "stage-out/" + urllib.parse.quote(relative), OUT, relative, body=source,
                              headers=headers).read()

    def commit(self, remote_root: str, files: Sequence[tuple[str, str, str]], last: bool = False) -> list[str]:
        """Move each (path in the job's staging area, sha256, its place: relative to the job's
        directory, or one of the job's returns) into place if it arrived whole; the paths
        that did not (removed, never taken for the file). `last`: then the staging area
        goes, if every file was whole."""
        answer = self._json("POST", "commit", OUT, what="the commit of the job's files",
                            body={"files": [list(pair) for pair in files], "last": last})
        rejected = answer.get("rejected")
        if not isinstance(rejected, list) or not all(isinstance(path, str) for path in rejected):
            raise StagingError("the staging server's answer to a commit has no list of rejected files")
        return rejected

    # -- one request -----------------------------------------------------------------------

    def _fetch_one(self, path: str, target: Path) -> None:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = target.with_name(target.name + PART)
        digest, have = hashlib.sha256(), 0
        if part.exists():  # what a killed fetch left: hashed again, then resumed after it
            with open(part, "rb") as kept:
                while chunk := kept.read(CHUNK):
                    digest.update(chunk)
                    have += len(chunk)
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = self._request("GET", "input?" + urllib.parse.urlencode({"path": path}), IN, path,
                                 headers=headers)
        if response.status != 206:  # the whole file (a server that does not resume, or nothing kept)
            digest, have = hashlib.sha256(), 0
        with response, open(part, "ab" if have else "wb") as out:
            os.fchmod(out.fileno(), 0o700 if self._executable.get(path) else 0o600)
            try:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    have += len(chunk)
            except (OSError, http.client.HTTPException) as exc:
                raise StagingUnreachable(f"the staging server broke off sending {path}: {exc}") from None
        expected = self._expected.get(path)
        if expected is not None and expected != (have, digest.hexdigest()):
            part.unlink()
            raise StagingError(f"input arrived other than it left the submitter's host (size or sha256 differ): "
                               f"{path}")
        part.rename(target)

    def _json(self, method: str, where: str, direction: str, what: str, body: Any = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data))} if data else {}
        response = self._request(method, where, direction, what, body=data, headers=headers)
        try:
            answer = json.loads(response.read(16 << 20))
        except (OSError, http.client.HTTPException) as exc:
            raise StagingUnreachable(f"the staging server broke off answering about {what}: {exc}") from None
        except ValueError:
            raise StagingError(f"the staging server's answer about {what} is not JSON") from None
        if not isinstance(answer, dict):
            raise StagingError(f"the staging server's answer about {what} is not a JSON object")
        return answer

    def _request(self, method: str, where: str, direction: str, what: str, body: Any = None,
                 headers: Mapping[str, str] | None = None) -> http.client.HTTPResponse:
        token = self.credentials.get(direction)
        if not token:
            raise StagingError(f"job {self.job_id} has no staging token to {'read' if direction == IN else 'send'} "
                               f"{what}")
        connection = self._connection()
        url = f"{self.base}{API}/{urllib.parse.quote(self.job_id)}/{where}"
        try:
            connection.connect()  # within connect_timeout_s; then IO_TIMEOUT_S without progress
            if connection.sock is not None:
                connection.sock.settimeout(IO_TIMEOUT_S)
            connection.request(method, url, body=body, headers={**(headers or {}), "Authorization": f"Bearer {token}"})
            response = connection.getresponse()
        except ssl.SSLCertVerificationError as exc:  # the set-up's fault, not the network's
            raise StagingError(f"the staging server's certificate is not trusted: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise StagingUnreachable(f"the staging server cannot be reached for now ({self.settings.url}): "
                                     f"{type(exc).__name__}: {exc}") from None
        if response.status in (200, 206):
            return response
        said = " ".join(response.read(2000).decode(errors="replace").split())[:500]
        if response.status >= 500 or response.status == 429:
            raise StagingUnreachable(f"the staging server answered {response.status} for {what}: {said}")
        raise StagingError(f"the staging server refused {what} ({response.status}): {said}")

    def _connection(self) -> http.client.HTTPConnection:
        timeout = self.settings.connect_timeout_s
        if self.secure:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
