"""A signed message's freshness: what a signer stamps, and which stamps a worker refuses."""
from __future__ import annotations

import pytest

from galaxy_tasks import config, freshness
from galaxy_tasks.freshness import CLOCK_SKEW_S, Freshness

NOW = 1_800_000_000.0


def test_a_task_body_is_stamped_with_a_new_id_and_its_expiry_and_nothing_else_is():
    body = [[], {"job_id": "j"}, {"callbacks": None, "chain": None}]
    stamped = freshness.stamp(body, 600, NOW)
    again = freshness.stamp(body, 600, NOW)
    fresh = freshness.read(stamped[2][freshness.KEY])
    assert isinstance(fresh, Freshness) and (fresh.sent, fresh.expires) == (NOW, NOW + 600)
    assert stamped[:2] == body[:2] and stamped[2]["callbacks"] is None, "the task's own body is kept"
    assert again[2][freshness.KEY]["id"] != fresh.id, "every message has an id of its own"
    control = {"method": "ping", "arguments": {}}
    assert freshness.stamp(control, 600, NOW) is control, "a control message or an event is left as it is"


@pytest.mark.parametrize("value, named", [
    (None, "carries no freshness"),
    ({"id": "x" * 31, "sent": NOW, "expires": NOW + 1}, "32 letters or digits"),
    ({"id": "../" * 10 + "ab", "sent": NOW, "expires": NOW + 1}, "32 letters or digits"),
    ({"id": "a" * 32, "sent": "now", "expires": NOW}, "in seconds"),
    ({"id": "a" * 32, "sent": NOW, "expires": float("inf")}, "in seconds"),
    ({"id": "a" * 32, "sent": True, "expires": NOW}, "in seconds"),
    ({"id": "a" * 32, "sent": NOW, "expires": NOW + freshness.MAX_TTL_S + 1}, "at most 3600 s"),
    ({"id": "a" * 32, "sent": NOW, "expires": NOW - 1}, "claims to live -1 s"),
])
def test_a_freshness_a_worker_cannot_check_is_named(value, named):
    found = freshness.read(value)
    assert isinstance(found, str) and named in found, found


def test_expired_and_future_messages_are_refused_within_a_clock_skew():
    fresh = Freshness("a" * 32, NOW, NOW + 600)
    assert freshness.problem(fresh, NOW) is None
    assert freshness.problem(fresh, NOW + 600 + CLOCK_SKEW_S) is None, "a slow worker clock is tolerated"
    assert "expired 6 s ago" in str(freshness.problem(fresh, NOW + 606))
    assert freshness.problem(fresh, NOW - CLOCK_SKEW_S) is None, "a signer a few seconds ahead is tolerated"
    assert "6 s in the future by its signer's clock" in str(freshness.problem(fresh, NOW - 6))
    assert fresh.kept_until == NOW + 600 + CLOCK_SKEW_S


def test_the_message_life_is_configurable_within_bounds():
    assert config.load({}).message_ttl == 600
    assert config.load({"GALAXY_TASKS_MESSAGE_TTL": "120"}).message_ttl == 120
    for value in ("60", "7200"):
        with pytest.raises(ValueError, match="GALAXY_TASKS_MESSAGE_TTL must be 120 to 3600 seconds"):
            config.load({"GALAXY_TASKS_MESSAGE_TTL": value})


def test_a_worker_takes_a_signed_message_once_unless_the_broker_gives_it_back(tmp_path):
    """`security.stale` on the request Celery builds for a step (its embed's freshness and
    the broker's delivery_info): a first copy is taken, a second refused as a replay, a copy
    the broker gave back (its worker died) taken again; a message without freshness or past
    its expiry is refused; unsigned deployments and direct calls are not asked."""
    import time

    from celery.app.task import Context as Request

    from galaxy_tasks.edge import security
    from tests.support.embedded import embedded_context

    def request(fresh: dict | None, redelivered: bool = False, **extra: object) -> Request:
        return Request(called_directly=False, freshness=fresh, delivery_info={"redelivered": redelivered}, **extra)

    stamp = freshness.stamp([[], {}, {}], 600, time.time())[2][freshness.KEY]
    conf = "destinations:\n  stub: {runner: stub}\ndefault: stub\n"
    (tmp_path / "signed").mkdir()
    (tmp_path / "unsigned").mkdir()
    with embedded_context(tmp_path / "signed", conf, SIGNING_KEY="key.pem") as ctx:
        assert security.stale(ctx, request(stamp)) is None
        assert "replayed: message" in str(security.stale(ctx, request(stamp)))
        assert security.stale(ctx, request(stamp, redelivered=True)) is None
        assert "carries no freshness" in str(security.stale(ctx, request(None)))
        old = freshness.stamp([[], {}, {}], 600, time.time() - 1000)[2][freshness.KEY]
        assert "expired 400 s ago" in str(security.stale(ctx, request(old)))
        assert security.stale(ctx, Request(freshness=None)) is None, "a step called as a function"
        assert security.message_job_id(request(stamp)) == security.message_job_id(request(stamp)) is not None
    with embedded_context(tmp_path / "unsigned", conf) as ctx:
        assert security.stale(ctx, request(None)) is None
