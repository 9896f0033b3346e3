"""The Mesos master TEST DOUBLE itself, over raw HTTP (no pymesos): the wire details the
runner tests rely on."""
from __future__ import annotations

import getpass
import http.client
import json
from typing import Any

import pytest
from mesos_master import FakeMesosMaster

pytestmark = pytest.mark.mesos


class Subscription:
    """A SUBSCRIBE call and its RecordIO event stream."""

    def __init__(self, master: FakeMesosMaster, framework_id: str | None = None, **info: Any) -> None:
        body: dict[str, Any] = {"type": "SUBSCRIBE", "subscribe": {"framework_info": {
            "user": getpass.getuser(), "name": "raw", "failover_timeout": 60, **info}}}
        if framework_id:
            body["framework_id"] = {"value": framework_id}
        host, port = master.address.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.conn.request("POST", "/api/v1/scheduler", json.dumps(body),
                          {"Content-Type": "application/json", "Accept": "application/json"})
        self.resp = self.conn.getresponse()
        self.stream_id = self.resp.getheader("Mesos-Stream-Id")

    def event(self) -> dict[str, Any]:
        length = b""
        while not length.endswith(b"\n"):
            length += self.resp.read(1)
        return json.loads(self.resp.read(int(length)))

    def until(self, kind: str) -> dict[str, Any]:
        while (event := self.event())["type"] != kind:
            pass
        return event


def call(master: FakeMesosMaster, body: dict[str, Any], stream_id: str | None,
         content_type: str = "application/json") -> tuple[int, bytes]:
    host, port = master.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": content_type}
    if stream_id:
        headers["Mesos-Stream-Id"] = stream_id
    conn.request("POST", "/api/v1/scheduler", json.dumps(body), headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def launch_one(fid: dict[str, Any], offer: dict[str, Any], command: str, **accept: Any) -> dict[str, Any]:
    """An ACCEPT of `offer` that launches one shell task, `t1`."""
    task = {"name": "t", "task_id": {"value": "t1"}, "agent_id": offer["agent_id"],
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}}],
            "command": {"shell": True, "value": command}}
    return {"type": "ACCEPT", "framework_id": fid, "accept": {
        "offer_ids": [offer["id"]], "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}], **accept}}


@pytest.fixture
def fake(tmp_path):
    with FakeMesosMaster(agents=2, heartbeat_s=0.3, workdir=tmp_path, control=True) as m:
        yield m


def test_subscribe_stream_heartbeats_and_offers(fake):
    sub = Subscription(fake)
    assert sub.resp.status == 200 and sub.stream_id
    assert sub.resp.getheader("Transfer-Encoding") == "chunked"
    subscribed = sub.event()
    assert subscribed["type"] == "SUBSCRIBED"
    assert subscribed["subscribed"]["heartbeat_interval_seconds"] == 0.3
    offers = sub.until("OFFERS")["offers"]["offers"]
    assert len(offers) == 2 and {r["name"] for r in offers[0]["resources"]} == {"cpus", "mem"}
    assert sub.until("HEARTBEAT") == {"type": "HEARTBEAT"}


def test_calls_need_json_and_the_stream_id(fake):
    sub = Subscription(fake)
    fid = sub.event()["subscribed"]["framework_id"]
    suppress = {"type": "SUPPRESS", "framework_id": fid}
    assert call(fake, suppress, sub.stream_id, "application/x-protobuf")[0] == 415
    assert call(fake, suppress, "not-the-stream")[0] == 400
    assert call(fake, suppress, sub.stream_id)[0] == 202
    assert fake.state()["frameworks"][0]["suppressed"]


def test_launch_update_acknowledge_and_resend(fake):
    fake.update_retry_s = 0.3
    sub = Subscription(fake)
    fid = sub.event()["subscribed"]["framework_id"]
    offer = sub.until("OFFERS")["offers"]["offers"][0]
    assert call(fake, launch_one(fid, offer, "exit 2", filters={"refuse_seconds": 60}), sub.stream_id)[0] == 202
    first = sub.until("UPDATE")["update"]["status"]
    assert first["state"] == "TASK_STARTING" and first["uuid"]
    again = sub.until("UPDATE")["update"]["status"]  # not acknowledged: sent again
    assert again["uuid"] == first["uuid"]
    states = []
    status = first
    while status["state"] != "TASK_FAILED":
        ack = {"type": "ACKNOWLEDGE", "framework_id": fid, "acknowledge": {
            "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": status["uuid"]}}
        assert call(fake, ack, sub.stream_id)[0] == 202
        while (status := sub.until("UPDATE")["update"]["status"])["uuid"] == ack["acknowledge"]["uuid"]:
            pass
        states.append(status["state"])
    assert states == ["TASK_RUNNING", "TASK_FAILED"]
    assert status["message"] == "Command exited with status 2"


def test_a_task_of_a_user_the_agent_does_not_have_fails_to_launch(fake):
    """As a Mesos agent does: the task's user (here the framework's) must exist on the agent."""
    sub = Subscription(fake, user="gtrunosuchuser")
    fid = sub.event()["subscribed"]["framework_id"]
    offer = sub.until("OFFERS")["offers"]["offers"][0]
    assert call(fake, launch_one(fid, offer, "true"), sub.stream_id)[0] == 202
    status = sub.until("UPDATE")["update"]["status"]
    assert status["state"] == "TASK_FAILED" and "no user 'gtrunosuchuser'" in status["message"], status


def test_teardown_removes_the_framework_for_good(fake):
    sub = Subscription(fake)
    fid = sub.event()["subscribed"]["framework_id"]
    assert call(fake, {"type": "TEARDOWN", "framework_id": fid}, sub.stream_id)[0] == 202
    assert fake.state()["frameworks"] == [] and fid["value"] in fake.removed
    again = Subscription(fake, framework_id=fid["value"])
    assert again.event() == {"type": "ERROR", "error": {"message": "Framework has been removed"}}


def test_redirects_version_and_control(fake, tmp_path):
    host, port = fake.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/version")
    assert json.loads(conn.getresponse().read())["version"].startswith("1.")
    conn.request("GET", "/master/redirect")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 307 and resp.getheader("Location") == f"//{fake.address}"
    with FakeMesosMaster(agents=0, leader=fake.address, workdir=tmp_path / "s") as standby:
        assert Subscription(standby).resp.status == 307
    sub = Subscription(fake)
    sub.until("OFFERS")
    conn.request("POST", "/control/rescind_offers", "{}")
    assert json.loads(conn.getresponse().read()) == {"result": 2}
    assert sub.until("RESCIND")["rescind"]["offer_id"]["value"]
