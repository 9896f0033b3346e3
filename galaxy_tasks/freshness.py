"""A signed task message's freshness: an id and an expiry inside what is signed.

A signature proves who made a message, not that it is new: a copy captured from the broker
verifies again whenever anyone who can publish pushes it back. So every signer puts
`freshness` (`id`, `sent`, `expires`; seconds since the epoch) in the embed of Celery's
`[args, kwargs, embed]` body before it signs it, and a worker refuses a message past its
expiry, one sent in its future, or one whose id it has taken before (`edge.security.stale`).
Clocks may differ by `CLOCK_SKEW_S` between a signer and a worker.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any, TypeGuard

KEY = "freshness"
#: how long a message a signer sends is good for, unless the signer is told otherwise
DEFAULT_TTL_S = 300.0
#: the longest life a message may claim, so the window of ids taken is bounded
MAX_TTL_S = 3600.0
#: how far a signer's clock and a worker's may differ
CLOCK_SKEW_S = 5.0
_ID_LENGTH = 32


@dataclass(frozen=True)
class Freshness:
    id: str
    sent: float
    expires: float

    @property
    def kept_until(self) -> float:
        """Until when the id must be remembered: a copy after that is refused as expired."""
        return self.expires + CLOCK_SKEW_S


def stamp(body: Any, ttl_s: float, now: float) -> Any:
    """A task body (`[args, kwargs, embed]`) with a new freshness in its embed; any other
    body (a control message, an event) as it is."""
    if not (isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[2], (dict, type(None)))):
        return body
    args, kwargs, embed = body
    fresh = {"id": uuid.uuid4().hex, "sent": round(now, 3), "expires": round(now + ttl_s, 3)}
    return [args, kwargs, {**(embed or {}), KEY: fresh}]


def read(value: Any) -> Freshness | str:
    """The freshness a message carries, or why it carries none a worker can check."""
    if not isinstance(value, dict):
        return "it carries no freshness (an id and an expiry inside what is signed)"
    found, sent, expires = value.get("id"), value.get("sent"), value.get("expires")
    if not isinstance(found, str) or len(found) != _ID_LENGTH or not found.isalnum():
        return f"its freshness id must be {_ID_LENGTH} letters or digits"
    if not (_seconds(sent) and _seconds(expires)):
        return "its freshness must give sent and expires in seconds"
    if not 0 < expires - sent <= MAX_TTL_S:
        return f"it claims to live {expires - sent:.0f} s (at most {MAX_TTL_S:.0f} s)"
    return Freshness(found, float(sent), float(expires))


def _seconds(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def problem(fresh: Freshness, now: float) -> str | None:
    """Why a message is too old or too new to act on, or None."""
    if now > fresh.expires + CLOCK_SKEW_S:
        return f"expired {now - fresh.expires:.0f} s ago (sent {now - fresh.sent:.0f} s ago)"
    if fresh.sent > now + CLOCK_SKEW_S:
        return (f"sent {fresh.sent - now:.0f} s in the future by its signer's clock "
                f"(clocks may differ by {CLOCK_SKEW_S:.0f} s)")
    return None
