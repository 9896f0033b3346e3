"""The plugin's lookouts for interactive tools' entry points, without Galaxy: one per job,
looking at once and then every interval until there is nothing more to look for, stopped by
the job's end, giving up (and saying so) at the bound."""
from __future__ import annotations

import threading
import time
from typing import Callable

from galaxy_tasks.galaxy.entry_points import Lookouts


def wait(predicate: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


class Job:
    """A job whose entry points Galaxy has once `found` is set; counts the looks."""

    def __init__(self) -> None:
        self.found = threading.Event()
        self.looks = 0

    def look(self) -> bool:
        self.looks += 1
        return self.found.is_set()


def test_a_lookout_looks_at_once() -> None:
    lookouts = Lookouts(interval_s=60)
    job = Job()
    lookouts.start("g-main-1", job.look)
    wait(lambda: job.looks == 1)  # well before the interval
    lookouts.stop_all()


def test_a_lookout_looks_again_until_galaxy_has_the_entry_points() -> None:
    counts: list[int] = []
    lookouts = Lookouts(interval_s=0.05, counted=counts.append)
    job = Job()
    assert lookouts.start("g-main-1", job.look)
    wait(lambda: job.looks >= 3)
    assert "g-main-1" in lookouts
    job.found.set()
    wait(lambda: len(lookouts) == 0)
    looks = job.looks
    time.sleep(0.2)
    assert job.looks == looks, "no look once Galaxy has them"
    assert counts == [1, 0]


def test_one_lookout_per_job_and_none_after_its_end() -> None:
    lookouts = Lookouts(interval_s=0.05)
    job, other = Job(), Job()
    assert lookouts.start("g-main-1", job.look)
    assert not lookouts.start("g-main-1", other.look), "a redelivered running event starts no second one"
    assert lookouts.start("g-main-2", other.look)
    assert len(lookouts) == 2
    lookouts.stop("g-main-1")
    wait(lambda: "g-main-1" not in lookouts)
    looks = job.looks
    time.sleep(0.2)
    assert job.looks == looks, "a job that ended is not looked at"
    assert other.looks > 1 and len(lookouts) == 1
    lookouts.stop_all()
    assert len(lookouts) == 0
    assert not any(t.name.startswith("entry-points-") and t.is_alive() for t in threading.enumerate())


def test_a_lookout_gives_up_at_the_bound_and_says_so(caplog) -> None:
    gave_up: list[str] = []
    lookouts = Lookouts(interval_s=0.02, bound_s=0.2, gave_up=gave_up.append)
    job = Job()
    lookouts.start("g-main-3", job.look)
    wait(lambda: gave_up == ["g-main-3"])
    wait(lambda: len(lookouts) == 0)
    assert "(g-main-3) no entry points after 0.2 s" in caplog.text
    assert job.looks >= 5


def test_a_look_that_raises_is_tried_again() -> None:
    calls = []

    def look() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("database away")
        return True

    lookouts = Lookouts(interval_s=0.02)
    lookouts.start("g-main-4", look)
    wait(lambda: len(lookouts) == 0)
    assert len(calls) == 3
