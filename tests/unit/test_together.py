"""Sending from a thread of its own: an item alone goes at once, items that come while a
send is under way go together in the next send, and a failed send stops nothing."""
from __future__ import annotations

import threading
import time

from galaxy_tasks.edge.together import Together


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.001)


def test_an_item_alone_goes_at_once_and_those_that_come_meanwhile_go_together():
    sent: list[list[int]] = []
    release = threading.Event()

    def send(items: list[int]) -> None:
        sent.append(items)
        release.wait(5)

    together = Together(send, "test", most=4)
    together(0)
    _until(lambda: sent == [[0]])
    for item in range(1, 7):
        together(item)
    release.set()
    assert together.flush()
    assert sent == [[0], [1, 2, 3, 4], [5, 6]], "at most `most` a send, in the order they came"


def test_a_send_that_fails_is_logged_and_the_next_ones_still_go(caplog):
    sent: list[list[str]] = []

    def send(items: list[str]) -> None:
        if items == ["bad"]:
            raise ConnectionError("broker gone")
        sent.append(items)

    together = Together(send, "test", most=10)
    together("bad")
    assert together.flush()
    together("good")
    assert together.flush()
    assert sent == [["good"]]
    assert "event=send_failed" in caplog.text and "broker gone" in caplog.text
