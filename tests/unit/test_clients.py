"""Clients' namespaces in the job_conf: parsed with the certificate read, and checked
against the signer of a submit."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from celery.security.certificate import Certificate

from galaxy_tasks.errors import ConfigError
from galaxy_tasks.routing import parse
from galaxy_tasks.yamlconf import loads
from tests.integration.test_security import _certificate


def conf(cert: Path, **entry: object) -> str:
    fields = {"certificate": str(cert), "ids": ["g-main-*"], "events_queues": ["galaxy.main", "galaxy.main.*"],
              **entry}
    return yaml.safe_dump({"destinations": {"local": {"runner": "local"}}, "clients": {"galaxy": fields}})


def test_only_the_owner_may_use_its_ids_and_events_queues(tmp_path: Path) -> None:
    _, cert = _certificate(tmp_path, "galaxy")
    clients = parse(loads(conf(cert))).clients
    owner = Certificate(cert.read_text()).get_id()
    assert clients.intrusion(owner, "g-main-47", "galaxy.main") is None
    assert clients.intrusion("someone 1", "g-main-47", "mine") == ("id", "job id 'g-main-47' belongs to client 'galaxy'")
    assert clients.intrusion("someone 1", "x-1", "galaxy.main.h2")[0] == "events.queue"  # type: ignore[index]
    assert clients.intrusion("someone 1", "g-mainx", "galaxy.mainx") is None  # exact name, prefix up to the *
    assert clients.intrusion(None, "g-main-47", "galaxy.main") is None, "unsigned: nothing to check against"


@pytest.mark.parametrize("entry, words", [
    ({"certificate": "/nonexistent.pem"}, "cannot read the certificate"),
    ({"ids": []}, "non-empty list"),
    ({"ids": ["g-*-x"]}, "only a trailing *"),
    ({"colour": "blue"}, "unknown key 'colour'"),
])
def test_a_bad_client_entry_is_named(tmp_path: Path, entry: dict, words: str) -> None:
    _, cert = _certificate(tmp_path, "galaxy")
    with pytest.raises(ConfigError, match="clients.galaxy") as error:
        parse(loads(conf(cert, **entry)))
    assert words in str(error.value)
