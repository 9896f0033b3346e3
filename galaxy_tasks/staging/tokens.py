"""Tokens of the http transfer: what lets a far worker read one job's inputs (`in`) or write
that job's files home (`out`), and nothing else, until they expire.

Minted where the job is prepared, on the submitter's side, with a secret only that side
holds (`GALAXY_TASKS_STAGING_SECRET`: the steps workers and the staging server); the far
worker gets them with the job's row and cannot mint one for another job. A token names the
job, its directory's token (so it is void for a later job with the same id), its
direction and its expiry, signed with HMAC-SHA256.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from galaxy_tasks.errors import ConfigError

IN, OUT = "in", "out"
DIRECTIONS = (IN, OUT)
#: the shortest secret taken (bytes): shorter ones are guessable
MIN_SECRET = 32
_VERSION = "gts1"


class TokenRefused(Exception):
    """A token that is not for this: forged, expired, another job's or another direction's."""


@dataclass(frozen=True)
class Claim:
    """What a checked token grants: one direction of one job's directory."""

    job_id: str
    dir_token: str
    direction: str


def key(secret: str) -> bytes:
    """The HMAC key of a configured secret, refused if it is too short to be one."""
    if len(secret.encode()) < MIN_SECRET:
        raise ConfigError(f"GALAXY_TASKS_STAGING_SECRET must be at least {MIN_SECRET} bytes (it is "
                          f"{'unset' if not secret else 'shorter'}): the http transfer's tokens are signed with it")
    return hashlib.sha256(b"galaxy-tasks staging tokens\0" + secret.encode()).digest()


def mint(signing_key: bytes, job_id: str, dir_token: str, direction: str, ttl_s: float,
         now: float | None = None) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"a token's direction is in or out, not {direction!r}")
    claims = {"job": job_id, "dir": dir_token, "to": direction, "exp": int((now or time.time()) + ttl_s)}
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{_VERSION}.{body}.{_b64(_mac(signing_key, body))}"


def check(signing_key: bytes, token: str, direction: str, now: float | None = None) -> Claim:
    """What `token` grants in `direction`; TokenRefused saying why not."""
    version, _, rest = token.partition(".")
    body, _, mac = rest.partition(".")
    if version != _VERSION or not body or not mac:
        raise TokenRefused("not a staging token")
    try:
        signature = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    except (binascii.Error, ValueError):
        raise TokenRefused("not a staging token") from None
    if not hmac.compare_digest(signature, _mac(signing_key, body)):
        raise TokenRefused("the token's signature does not match (forged, or signed with another secret)")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if claims["to"] != direction:
        raise TokenRefused(f"the token is for {claims['to']!r}, not {direction!r}")
    if claims["exp"] < (now or time.time()):
        raise TokenRefused("the token expired (GALAXY_TASKS_STAGING_TOKEN_TTL_"
                           f"{direction.upper()}); rerun the job for new ones")
    return Claim(job_id=claims["job"], dir_token=claims["dir"], direction=direction)


def _mac(signing_key: bytes, body: str) -> bytes:
    return hmac.new(signing_key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def for_job(secret: str, job_id: str, dir_token: str, ttl_in_s: float, ttl_out_s: float) -> str:
    """A job's two tokens, as prepare keeps them with its row (JSON)."""
    signing_key = key(secret)
    return json.dumps({IN: mint(signing_key, job_id, dir_token, IN, ttl_in_s),
                       OUT: mint(signing_key, job_id, dir_token, OUT, ttl_out_s)})


def parse(kept: str | None) -> dict[str, str]:
    """A job's tokens as its row keeps them (none for a job whose destination does not use
    http, or a value that is not what `for_job` wrote)."""
    try:
        found = json.loads(kept) if kept else {}
    except ValueError:
        return {}
    return {d: found[d] for d in DIRECTIONS if isinstance(found, dict) and isinstance(found.get(d), str)}
