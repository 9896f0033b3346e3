"""Fair share: on a destination with more waiting jobs than slots, whose job starts next.

The next job comes from the party (a user, or a group of users sharing one place in line)
with the fewest jobs running there for its share, not from the oldest job overall; within
one user, jobs keep their order. Galaxy's own handlers are first in, first out across users
(`ready_window_size` only bounds how many of one user's jobs a handler looks at), so one
user's burst holds everyone else back; here it cannot.

Shares are set in the job_conf's top-level `shares:` list, written like Galaxy's `limits:`
(`type`, `id`, `value`):

    shares:
      - {type: user, id: alice, value: 2}          # alice may hold twice as many slots
      - {type: group, id: lab, users: [bob, carol], value: 3}

A user named by no entry has a share of 1. This module decides; it reads nothing:
the store counts running and waiting jobs (store/line.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal, Mapping, NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from galaxy_tasks.confmodels import refuse, says
from galaxy_tasks.yamlconf import Where

#: the party of a job with no user
ANONYMOUS = "user:-"


class Waiting(NamedTuple):
    """One user's jobs waiting on a destination: how many, and since when the first."""

    user: str | None
    jobs: int
    first: datetime


@dataclass(frozen=True)
class Shares:
    """Each party's share (default 1), and which group each grouped user belongs to."""

    users: Mapping[str, float] = field(default_factory=dict)
    groups: Mapping[str, float] = field(default_factory=dict)
    group_of: Mapping[str, str] = field(default_factory=dict)

    def party(self, user: str | None) -> str:
        """Whose place in line a user's job takes: the user's group, or the user."""
        if user is None:
            return ANONYMOUS
        group = self.group_of.get(user)
        return f"group:{group}" if group is not None else f"user:{user}"

    def share(self, party: str) -> float:
        kind, _, name = party.partition(":")
        return (self.groups if kind == "group" else self.users).get(name, 1.0)

    def turn(self, running: Mapping[str | None, int], waiting: list[Waiting]) -> Waiting | None:
        """The user whose oldest waiting job starts next: the party with the fewest running
        jobs for its share (ties: the party waiting longest), and within a group the user
        waiting longest. None if nothing waits."""
        if not waiting:
            return None
        held: dict[str, int] = {}
        for user, count in running.items():
            party = self.party(user)
            held[party] = held.get(party, 0) + count
        best = min(waiting, key=lambda w: (held.get(self.party(w.user), 0) / self.share(self.party(w.user)),
                                           w.first))
        return best

    def place(self, user: str | None, ahead_of_own: int, running: Mapping[str | None, int],
              waiting: list[Waiting]) -> int:
        """How many jobs start before a job of `user` that has `ahead_of_own` of its own
        user's (or group's) jobs before it: those, and every other party's jobs that fair
        share puts first (until that party holds as much for its share as this one will)."""
        me = self.party(user)
        held: dict[str, int] = {}
        for who, count in running.items():
            held[self.party(who)] = held.get(self.party(who), 0) + count
        mine_then = (held.get(me, 0) + ahead_of_own) / self.share(me)
        queued: dict[str, int] = {}
        for w in waiting:
            party = self.party(w.user)
            if party != me:
                queued[party] = queued.get(party, 0) + w.jobs
        before = ahead_of_own
        for party, count in queued.items():
            room = int(mine_then * self.share(party)) - held.get(party, 0)
            before += max(0, min(count, room))
        return before


class ShareModel(BaseModel):
    """A share of the job_conf's top-level `shares:` list (fair share between users)."""

    model_config = ConfigDict(extra="forbid", title="Share")
    type: Annotated[Literal["user", "group"], says("must be user or group")] = Field(
        description="a user's share, or a group's (its users share one)")
    id: Annotated[str, Field(strict=True, min_length=1)] = Field(description="the user's or the group's name")
    value: Annotated[float, Field(strict=True, gt=0, le=1_000_000), says("must be a number above 0 (a share)")] = Field(
        description="the share: a party with share 2 may hold twice as many of a saturated destination's slots")
    users: list[Annotated[str, Field(strict=True, min_length=1)]] | None = Field(
        None, description="a group's users")

    @model_validator(mode="after")
    def _members(self) -> ShareModel:
        if self.type == "user" and self.users is not None:
            raise refuse("only a group has users", "users")
        if self.type == "group" and not self.users:
            raise refuse("a group needs users: a list of user names", "users")
        return self


def shares_from(given: Sequence[ShareModel] | None, here: Where) -> Shares:
    """The job_conf's checked `shares:` list; a user may be in one group only."""
    users: dict[str, float] = {}
    groups: dict[str, float] = {}
    group_of: dict[str, str] = {}
    for index, share in enumerate(given or ()):
        if share.type == "user":
            users[share.id] = share.value
            continue
        for member in share.users or ():
            if group_of.get(member, share.id) != share.id:
                raise here.at(index, "users").error(f"user {member!r} is already in group {group_of[member]!r}")
            group_of[member] = share.id
        groups[share.id] = share.value
    return Shares(users, groups, group_of)
