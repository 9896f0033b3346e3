"""The submitter's side of the http transfer (`galaxy-tasks staging-server`): a small file
server that a far worker reaches with a job's tokens, so it needs no login on this host.

It serves only what a token's job owns, found from the job's row and never from the
request: the job's declared inputs (their sizes and sha256, and each one streamed, resumed
with `Range`), uploads into the job's `<job dir>/.stage-out/` (streamed under a temporary
name), and the commit that moves each uploaded file into place only if its sha256 is the
one the worker computed (the contract of `_COMMIT` in staging/rsync.py). A path with `..`,
an absolute one, or one through a link is refused; nothing outside the job directory is
written.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import stat
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Protocol

from galaxy_tasks.config import Settings
from galaxy_tasks.jobdir import HashBudget
from galaxy_tasks.logs import event
from galaxy_tasks.staging import tokens
from galaxy_tasks.staging.rsync import STAGE_OUT

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: the largest JSON body taken (a commit lists every file of a job)
MAX_JSON = 16 << 20
#: seconds a connection may sit without progress
TIMEOUT_S = 120
_ROUTE = re.compile(r"^/v1/jobs/(?P<job>[A-Za-z0-9_.-]{1,64})/(?P<what>inputs|input|stage-out/.+|commit)$")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Job(Protocol):
    """What the server reads of a job's row."""

    @property
    def token(self) -> str | None: ...

    @property
    def job_dir(self) -> str | None: ...

    @property
    def inputs(self) -> list[str]: ...

    @property
    def returns(self) -> list[str] | None: ...


#: a job's row by its id (the store's `job`: the caller hands the door to SQL in)
Lookup = Callable[[str], "Job | None"]


class Refused(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def relative(path: str) -> list[str]:
    """The parts of a path below a job's directory; Refused if it is absolute, climbs out
    (`..`) or is not a plain path."""
    parts = path.split("/")
    if not path or len(path) > 4096 or "\0" in path or any(part in ("", ".", "..") for part in parts):
        raise Refused(HTTPStatus.FORBIDDEN, f"not a path inside the job's directory: {path!r}")
    return parts


def _walk(root_fd: int, parts: list[str], create: bool) -> int:
    """A directory below `root_fd` opened without following a link (made if `create`)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            inner = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = inner
    except OSError as exc:
        os.close(fd)
        raise Refused(HTTPStatus.FORBIDDEN, f"not a directory inside the job's directory: "
                                            f"{'/'.join(parts)} ({exc.strerror})") from None
    return fd


def _file_entry(path: str) -> dict[str, Any]:
    """An input file's size and sha256 (None for both: not a regular file, or unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return {"path": path, "size": None, "sha256": None}
    try:
        found = os.fstat(fd)
        regular = stat.S_ISREG(found.st_mode)
        return {"path": path, "size": found.st_size if regular else None, "sha256": _sha256(fd) if regular else None,
                "executable": bool(found.st_mode & 0o100)}
    finally:
        os.close(fd)


def _sha256(fd: int) -> str:
    """The sha256 of an open file, however large (the worker bounds what it stages)."""
    return HashBudget(bytes_left=1 << 62, deadline=float("inf")).digest(fd, 0) or ""


class Jobs:
    """What the server may touch of a job, from its row."""

    def __init__(self, lookup: Lookup, signing_key: bytes) -> None:
        self.lookup = lookup
        self.signing_key = signing_key

    def job(self, job_id: str, authorization: str | None, direction: str) -> Job:
        """The row of the job this request's token grants `direction` of; Refused if none."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or not token:
            raise Refused(HTTPStatus.UNAUTHORIZED, "a staging token is needed (Authorization: Bearer)")
        try:
            claim = tokens.check(self.signing_key, token.strip(), direction)
        except tokens.TokenRefused as exc:
            raise Refused(HTTPStatus.UNAUTHORIZED, str(exc)) from None
        if claim.job_id != job_id:
            raise Refused(HTTPStatus.FORBIDDEN, "the token is another job's")
        job = self.lookup(job_id)
        if job is None or not job.token or job.token != claim.dir_token or not job.job_dir:
            raise Refused(HTTPStatus.FORBIDDEN, "the token's job is not this job (no such job, or a later one "
                                                "with the same id)")
        return job

    def listing(self, job: Job) -> list[dict[str, Any]]:
        """Each declared input's size and sha256 (None where it is not a regular file); a
        directory's entry says so, followed by each directory and regular file below it (a
        link followed, as an input is whatever its path names)."""
        found: list[dict[str, Any]] = []
        for path in job.inputs or []:
            if not os.path.isdir(path):
                found.append(_file_entry(path))
                continue
            seen: set[tuple[int, int]] = set()
            for base, dirs, files in os.walk(path, followlinks=True):
                where = os.stat(base)
                if (where.st_dev, where.st_ino) in seen:  # a link back up: walked once
                    dirs.clear()
                    continue
                seen.add((where.st_dev, where.st_ino))
                dirs.sort()
                found.append({"path": base, "directory": True})
                found += [entry for name in sorted(files)
                          if (entry := _file_entry(os.path.join(base, name)))["sha256"] is not None]
        return found

    def open_input(self, job: Job, path: str) -> int:
        """One of the job's inputs, or a file below one that is a directory, opened."""
        declared = job.inputs or []
        below = os.path.normpath(path) == path and any(path.startswith(d.rstrip("/") + "/") for d in declared
                                                       if os.path.isdir(d))
        if path not in declared and not below:
            raise Refused(HTTPStatus.FORBIDDEN, f"{path!r} is not one of the job's inputs")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise Refused(HTTPStatus.NOT_FOUND, f"input {path} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(HTTPStatus.NOT_FOUND, f"input {path} is not a regular file")
        return fd

    def receive(self, job: Job, path: str, size: int, read: Callable[[int], bytes], executable: bool = False) -> None:
        """`size` bytes into `.stage-out/<path>`, under a temporary name until all arrived
        (executable by its owner if it was where it came from)."""
        parts = relative(path)
        root = os.open(str(job.job_dir), _DIR)
        try:
            where = _walk(root, [STAGE_OUT, *parts[:-1]], create=True)
        finally:
            os.close(root)
        temporary = f".{parts[-1][:200]}.{secrets.token_hex(6)}.upload"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o700 if executable else 0o600, dir_fd=where)
            try:
                left = size
                while left:
                    chunk = read(min(CHUNK, left))
                    if not chunk:
                        raise Refused(HTTPStatus.BAD_REQUEST, f"{path}: the body ended {left} bytes early")
                    os.write(fd, chunk)
                    left -= len(chunk)
            finally:
                os.close(fd)
            os.replace(temporary, parts[-1], src_dir_fd=where, dst_dir_fd=where)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=where)
            except OSError:
                pass
            raise
        finally:
            os.close(where)

    def commit(self, job: Job, files: list[tuple[str, str, str]], last: bool) -> list[str]:
        """Each file of `.stage-out/` whose sha256 is the one given moved to its place (below
        the job directory, or one of the paths the job returns to), the others removed and
        named; with `last`, `.stage-out/` goes if every file was whole."""
        root = os.open(str(job.job_dir), _DIR)
        rejected = []
        try:
            for path, want, place in files:
                target, name = self._place(root, job, place)
                try:
                    if not _commit_one(root, relative(path), want, target, name):
                        rejected.append(path)
                finally:
                    os.close(target)
        finally:
            os.close(root)
        if last and not rejected:
            shutil.rmtree(Path(str(job.job_dir)) / STAGE_OUT, ignore_errors=True)
        return rejected

    @staticmethod
    def _place(root: int, job: Job, place: str) -> tuple[int, str]:
        """The directory (opened) and name a file moves to: relative, below the job directory;
        absolute, one of the job's returns or below one that is a directory (no link
        followed below the declared path)."""
        if not place.startswith("/"):
            parts = relative(place)
            return _walk(root, parts[:-1], create=True), parts[-1]
        relative(place[1:])  # a plain path: no `..`, no empty part
        for declared in job.returns or []:
            declared = declared.rstrip("/")
            if place == declared:
                parent, name = os.path.split(place)
                os.makedirs(parent, mode=0o700, exist_ok=True)
                return os.open(parent, _DIR & ~os.O_NOFOLLOW), name
            if place.startswith(declared + "/"):
                os.makedirs(declared, mode=0o700, exist_ok=True)
                base = os.open(declared, _DIR & ~os.O_NOFOLLOW)
                try:
                    parts = place[len(declared) + 1:].split("/")
                    return _walk(base, parts[:-1], create=True), parts[-1]
                finally:
                    os.close(base)
        raise Refused(HTTPStatus.FORBIDDEN, f"{place!r} is not inside the job's directory or one of its returns")


def _commit_one(root: int, parts: list[str], want: str, target: int, name: str) -> bool:
    try:
        source = _walk(root, [STAGE_OUT, *parts[:-1]], create=False)
    except Refused:
        return False
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=source)
        except OSError:
            return False
        try:
            whole = stat.S_ISREG(os.fstat(fd).st_mode) and _sha256(fd) == want
            if whole:
                _move(fd, source, parts[-1], target, name)
            else:
                os.unlink(parts[-1], dir_fd=source)
            return whole
        finally:
            os.close(fd)
    finally:
        os.close(source)


def _move(fd: int, source: int, old: str, target: int, name: str) -> None:
    """Rename into place, or (another filesystem) copy under a temporary name, then rename."""
    try:
        os.replace(old, name, src_dir_fd=source, dst_dir_fd=target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    temporary = f".{name[:200]}.{secrets.token_hex(6)}.commit"
    out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                  dir_fd=target)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, CHUNK):
            os.write(out, chunk)
    finally:
        os.close(out)
    os.replace(temporary, name, src_dir_fd=target, dst_dir_fd=target)
    os.unlink(old, dir_fd=source)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.0"
    timeout = TIMEOUT_S

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged line by line (a URL may name a user's file); refusals are."""

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        route = _ROUTE.match(url.path)
        try:
            if route is None:
                raise Refused(HTTPStatus.NOT_FOUND, "no such resource")
            job_id, what = route["job"], route["what"]
            if (self.command, what) == ("GET", "inputs"):
                job = self.server.jobs.job(job_id, self.headers.get("Authorization"), tokens.IN)
                self._json({"inputs": self.server.jobs.listing(job)})
            elif (self.command, what) == ("GET", "input"):
                job = self.server.jobs.job(job_id, self.headers.get("Authorization"), tokens.IN)
                path = urllib.parse.parse_qs(url.query).get("path", [""])[0]
                self._send_file(self.server.jobs.open_input(job, path))
            elif self.command == "PUT" and what.startswith("stage-out/"):
                job = self.server.jobs.job(job_id, self.headers.get("Authorization"), tokens.OUT)
                self.server.jobs.receive(job, urllib.parse.unquote(what.removeprefix("stage-out/")),
                                         self._length(None), self.rfile.read,
                                         executable=self.headers.get("X-Executable") == "1")
                self._json({})
            elif (self.command, what) == ("POST", "commit"):
                job = self.server.jobs.job(job_id, self.headers.get("Authorization"), tokens.OUT)
                asked = json.loads(self.rfile.read(self._length(MAX_JSON)))
                files = asked.get("files") if isinstance(asked, dict) else None
                if not isinstance(files, list) or not all(
                        isinstance(f, list) and len(f) in (2, 3) and all(isinstance(x, str) for x in f) for f in files):
                    raise Refused(HTTPStatus.BAD_REQUEST, "a commit is {\"files\": [[path, sha256, place], ...], "
                                                          "\"last\": bool}")
                self._json({"rejected": self.server.jobs.commit(job, [(f[0], f[1], f[-1] if len(f) == 3 else f[0])
                                                                      for f in files], asked.get("last") is True)})
            else:
                raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served here")
        except Refused as refused:
            event(log, "staging_refused", level=logging.WARNING, client=self.client_address[0],
                  method=self.command, status=int(refused.status), reason=str(refused))
            self._answer(refused.status, json.dumps({"error": str(refused)}).encode())
        except ValueError:
            self._answer(HTTPStatus.BAD_REQUEST, b'{"error": "the body is not JSON"}')
        except OSError as exc:
            event(log, "staging_failed", level=logging.WARNING, method=self.command, error=str(exc))
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, json.dumps({"error": str(exc)}).encode())

    def _length(self, most: int | None) -> int:
        given = self.headers.get("Content-Length", "")
        if not given.isdigit():
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "a body needs its Content-Length")
        if most is not None and int(given) > most:
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of at most {most} bytes")
        return int(given)

    def _send_file(self, fd: int) -> None:
        try:
            size = os.fstat(fd).st_size
            start = _range_start(self.headers.get("Range"), size)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if start else HTTPStatus.OK)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            os.lseek(fd, start, os.SEEK_SET)
            while chunk := os.read(fd, CHUNK):
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the worker went away: it resumes, or starts again, on its next try
        finally:
            os.close(fd)

    def _json(self, value: Any) -> None:
        self._answer(HTTPStatus.OK, json.dumps(value).encode())

    def _answer(self, status: HTTPStatus, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _range_start(given: str | None, size: int) -> int:
    """Where a `Range: bytes=N-` asks to start (0: the whole file, for anything else)."""
    found = re.fullmatch(r"bytes=(\d+)-", given or "")
    start = int(found.group(1)) if found else 0
    return start if 0 < start < size else 0


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], jobs: Jobs) -> None:
        super().__init__(address, Handler)
        self.jobs = jobs


def build(settings: Settings, lookup: Lookup) -> Server:
    """The staging server of these settings, bound to its address (https with a cert and key),
    finding each job's row with `lookup`."""
    host, _, port = settings.staging_listen.rpartition(":")
    if not port.isdigit() or not host:
        raise ValueError(f"GALAXY_TASKS_STAGING_LISTEN must be host:port, not {settings.staging_listen!r}")
    if bool(settings.staging_cert) != bool(settings.staging_key):
        raise ValueError("GALAXY_TASKS_STAGING_CERT and GALAXY_TASKS_STAGING_KEY go together (https), or neither")
    server = Server((host.strip("[]"), int(port)), Jobs(lookup, tokens.key(settings.staging_secret)))
    if settings.staging_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(settings.staging_cert, settings.staging_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
