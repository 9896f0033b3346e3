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
        """Each declared input's size and sha256 (None where it is not a regular file)."""
        found = []
        for path in job.inputs or []:
            size: int | None = None
            digest: str | None = None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        size, digest = os.fstat(fd).st_size, _sha256(fd)
                finally:
                    os.close(fd)
            found.append({"path": path, "size": size, "sha256": digest})
        return found

    def open_input(self, job: Job, path: str) -> int:
        if path not in (job.inputs or []):
            raise Refused(HTTPStatus.FORBIDDEN, f"{path!r} is not one of the job's inputs")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise Refused(HTTPStatus.NOT_FOUND, f"input {path} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(HTTPStatus.NOT_FOUND, f"input {path} is not a regular file")
        return fd

    def receive(self, job: Job, path: str, size: int, read: Callable[[int], bytes]) -> None:
        """`size` bytes into `.stage-out/<path>`, under a temporary name until all arrived."""
        parts = relative(path)
        root = os.open(str(job.job_dir), _DIR)
        try:
            where = _walk(root, [STAGE_OUT, *parts[:-1]], create=True)
        finally:
            os.close(root)
        temporary = f".{parts[-1][:200]}.{secrets.token_hex(6)}.upload"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=where)
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

    def commit(self, job: Job, files: list[tuple[str, str]], last: bool) -> list[str]:
        """Each file of `.stage-out/` whose sha256 is the one given moved into place, the
        others removed and named; with `last`, `.stage-out/` goes if every file was whole."""
        root = os.open(str(job.job_dir), _DIR)
        rejected = []
        try:
            for path, want in files:
                if not self._commit_one(root, relative(path), want):
                    rejected.append(path)
        finally:
            os.close(root)
        if last and not rejected:
            shutil.rmtree(Path(str(job.job_dir)) / STAGE_OUT, ignore_errors=True)
        return rejected

    @staticmethod
    def _commit_one(root: int, parts: list[str], want: str) -> bool:
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
            finally:
                os.close(fd)
            if not whole:
                os.unlink(parts[-1], dir_fd=source)
                return False
            target = _walk(root, parts[:-1], create=True)
            try:
                os.replace(parts[-1], parts[-1], src_dir_fd=source, dst_dir_fd=target)
            finally:
                os.close(target)
            return True
        finally:
            os.close(source)


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
                                         self._length(None), self.rfile.read)
                self._json({})
            elif (self.command, what) == ("POST", "commit"):
                job = self.server.jobs.job(job_id, self.headers.get("Authorization"), tokens.OUT)
                asked = json.loads(self.rfile.read(self._length(MAX_JSON)))
                files = asked.get("files") if isinstance(asked, dict) else None
                if not isinstance(files, list) or not all(
                        isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in files):
                    raise Refused(HTTPStatus.BAD_REQUEST, "a commit is {\"files\": [[path, sha256], ...], \"last\": "
                                                          "bool}")
                self._json({"rejected": self.server.jobs.commit(job, [(p, h) for p, h in files],
                                                                asked.get("last") is True)})
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
