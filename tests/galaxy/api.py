"""The few Galaxy API calls the tests make, with the standard library (the project's own
venv has no HTTP client): users, histories, uploads, tool runs, jobs."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

TERMINAL = ("ok", "error", "deleted", "deleting", "failed", "skipped")


class ApiError(RuntimeError):
    pass


class GalaxyApi:
    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"x-api-key": self.key, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from None
        return json.loads(text) if text else None

    def reachable(self) -> bool:
        try:
            self.call("GET", "/api/version", timeout=5)
            return True
        except (OSError, ApiError):
            return False

    def user_api(self, email: str) -> GalaxyApi:
        """A GalaxyApi of a (new or existing) user, made with this admin's key."""
        users = self.call("GET", f"/api/users?f_email={email}")
        if users:
            user_id = users[0]["id"]
        else:
            user_id = self.call("POST", "/api/users", {"email": email, "username": email.split("@")[0],
                                                      "password": "gt-test-password"})["id"]
        return GalaxyApi(self.url, self.call("POST", f"/api/users/{user_id}/api_key"))

    def decode(self, encoded_id: str) -> int:
        return int(self.call("GET", f"/api/configuration/decode/{encoded_id}")["decoded_id"])

    def history(self, name: str) -> str:
        return self.call("POST", "/api/histories", {"name": name})["id"]

    def upload(self, history_id: str, content: str) -> str:
        """A pasted text dataset, once it is ok."""
        result = self.call("POST", "/api/tools/fetch", {
            "history_id": history_id,
            "targets": [{"destination": {"type": "hdas"},
                         "elements": [{"src": "pasted", "paste_content": content, "ext": "txt"}]}],
        })
        self.wait_job(result["jobs"][0]["id"], timeout=300, want="ok")  # Galaxy's own upload job: slow on a loaded host
        return result["outputs"][0]["id"]

    def run_tool(self, history_id: str, tool_id: str, dataset_id: str) -> tuple[str, str]:
        """Runs a tool on one dataset; returns the encoded ids of its job and its output."""
        result = self.call("POST", "/api/tools", {"history_id": history_id, "tool_id": tool_id,
                                                   "inputs": {"input": {"src": "hda", "id": dataset_id}}})
        return result["jobs"][0]["id"], result["outputs"][0]["id"]

    def run_batch(self, history_id: str, tool_id: str, dataset_ids: list[str]) -> tuple[list[str], list[str]]:
        """One request that runs a tool once for each dataset (Galaxy's batch mode); the
        encoded ids of the jobs and of their outputs."""
        result = self.call("POST", "/api/tools", {
            "history_id": history_id, "tool_id": tool_id,
            "inputs": {"input": {"batch": True, "values": [{"src": "hda", "id": d} for d in dataset_ids]}},
        }, timeout=300)
        return [job["id"] for job in result["jobs"]], [output["id"] for output in result["outputs"]]

    def run_many(self, history_id: str, tool_id: str, dataset_id: str, count: int, batch: int = 100) -> list[str]:
        """`count` jobs of the tool on one dataset, `batch` to a request; their encoded ids."""
        job_ids: list[str] = []
        while len(job_ids) < count:
            job_ids += self.run_batch(history_id, tool_id, [dataset_id] * min(batch, count - len(job_ids)))[0]
        return job_ids

    def dataset_text(self, dataset_id: str) -> str:
        request = urllib.request.Request(f"{self.url}/api/datasets/{dataset_id}/display?preview=false",
                                         headers={"x-api-key": self.key})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()

    def dataset_path(self, dataset_id: str) -> str:
        """Where the dataset's file is (an admin's key sees this)."""
        return self.call("GET", f"/api/datasets/{dataset_id}?view=detailed")["file_name"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/jobs/{job_id}?full=true")

    def wait_job(self, job_id: str, timeout: float = 120, want: str | tuple[str, ...] = TERMINAL,
                 poll: float = 0.2) -> dict[str, Any]:
        wanted = (want,) if isinstance(want, str) else want
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["state"] not in wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {job['state']}, not {wanted} after {timeout} s: {job}")
            if job["state"] in TERMINAL:
                raise AssertionError(f"job {job_id} ended {job['state']}, not {wanted}: {job}")
            time.sleep(poll)
            job = self.job(job_id)
        return job

    def cancel(self, job_id: str) -> Any:
        return self.call("DELETE", f"/api/jobs/{job_id}")


def wait_all(user: GalaxyApi, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Each job's state once all have ended, read a page of jobs at a time."""
    wanted = set(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        jobs = user.call("GET", f"/api/jobs?limit={len(job_ids) + 100}&order_by=create_time")
        states = {job["id"]: job["state"] for job in jobs if job["id"] in wanted}
        if len(states) == len(wanted) and all(state in TERMINAL for state in states.values()):
            return states
        if time.monotonic() > deadline:
            pending = sorted(job for job in wanted if states.get(job) not in TERMINAL)
            raise TimeoutError(f"{len(pending)} of {len(wanted)} jobs not ended after {timeout} s: {pending[:5]}")
        time.sleep(1)
