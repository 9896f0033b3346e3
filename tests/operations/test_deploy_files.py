"""docker-compose.yml, the Dockerfile and ops/systemd/: every command is a real entry point
of this project with valid options, every queue has a worker, start-up order and health
checks are declared, graceful stops outlast the longest step, and no secret is written.
No Docker engine runs here: the files are checked, not started."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from galaxy_tasks import routing
from galaxy_tasks.operations.health import node_name
from tests.support.deployment import ROOT
from tests.support.entrypoints import check
from tests.support.services import require

COMPOSE = ROOT / "docker-compose.yml"
SYSTEMD = ROOT / "ops" / "systemd"
JOB_CONF = ROOT / "ops" / "compose" / "job_conf.yml"
STEPS_QUEUE = "galaxy_tasks"
ENDS_QUEUE = "galaxy_tasks.ends"
#: the longest step: a batched check_jobs whose Grid Engine accounting lookup (qacct) is
#: bounded at 60 s (runners/drmaa.py), plus its database work
LONGEST_STEP_S = 90
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|PASSWD", re.I)
URL_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<pw>[^@/\s]+)@")
REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[?-][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def project_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("galaxy-tasks")}


def test_compose_has_every_part(compose):
    services = compose["services"]
    for name in ("redis", "postgres", "migrate", "steps-worker", "ends-worker", "local-worker", "drmaa-worker", "mesos-worker",
                 "beat", "flower", "metrics"):
        assert name in services, name
    assert check(services["migrate"]["command"]).kind == "galaxy-tasks db"
    assert services["migrate"]["command"][-1] == "upgrade"
    assert check(services["beat"]["command"]).kind == "galaxy-tasks beat"
    assert check(services["flower"]["command"]).kind == "galaxy-tasks flower"
    assert check(services["metrics"]["command"]).kind == "galaxy-tasks metrics"


def test_compose_commands_are_real_entry_points_and_every_queue_is_served(compose):
    served: dict[str, str] = {}
    job_conf = routing.load(JOB_CONF)
    known_queues = {STEPS_QUEUE, ENDS_QUEUE, *job_conf.queues}
    for name, service in project_services(compose).items():
        entry = check(service["command"])
        for test in [service.get("healthcheck", {}).get("test", [])]:
            if test:
                assert test[0] == "CMD", f"{name}: healthcheck must be an exec form"
                health = check(test[1:])
                if entry.node:
                    assert health.node and node_name(health.node) == entry.node, (name, health.node, entry.node)
        if entry.kind in ("galaxy-tasks worker", "celery worker"):
            assert entry.queues, f"{name}: a worker names its queue (-Q)"
            assert set(entry.queues) <= known_queues, (name, entry.queues)
            for queue in entry.queues:
                assert queue not in served, f"{queue} served by {served.get(queue)} and {name}"
                served[queue] = name
            assert "healthcheck" in service, f"{name}: a worker needs a health check"
            if entry.kind == "celery worker":
                assert entry.params["pool"].__module__ == "celery.concurrency.thread", f"{name}: threads pool"
    assert set(served) == known_queues, f"queues without a worker: {known_queues - set(served)}"
    assert served["drmaa"] == "drmaa-worker" and served["mesos"] == "mesos-worker"
    assert served[STEPS_QUEUE] == "steps-worker" and served["local"] == "local-worker"
    assert served[ENDS_QUEUE] == "ends-worker", "job ends have a worker of their own"


def test_compose_start_order_and_health(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            assert condition in ("service_healthy", "service_completed_successfully", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck for {name}"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("steps-worker", "ends-worker", "local-worker", "drmaa-worker", "mesos-worker", "beat", "metrics"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in ("steps-worker", "ends-worker", "local-worker", "drmaa-worker", "mesos-worker"):
        grace = services[name]["stop_grace_period"]
        assert _seconds(grace) > LONGEST_STEP_S, (name, grace)
    assert services["mesos-worker"]["deploy"]["replicas"] == 1


def test_compose_writes_no_secret(compose):
    text = COMPOSE.read_text()
    for match in URL_PASSWORD.finditer(text):
        assert match["pw"].startswith("${") and match["pw"].endswith("}"), match.group(0)

    def walk(node, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, str) and SECRET_KEY.search(key):
            assert REFERENCE.match(node), f"{key}: {node!r} is written in the file, not a ${{VAR:?}} reference"

    walk(compose)
    flower_auth = compose["services"]["flower"]["environment"]["GALAXY_TASKS_FLOWER_BASIC_AUTH"]
    assert flower_auth.startswith("${FLOWER_BASIC_AUTH:?")
    assert "--unauthenticated" not in text.replace("# ", "")
    redis = compose["services"]["redis"]
    assert "$$REDIS_PASSWORD" in " ".join(redis["command"])  # read by the container's shell, not written


def test_dockerfile_copies_what_exists_and_installs_the_project(compose):
    text = (ROOT / "Dockerfile").read_text()
    assert compose["services"]["migrate"]["build"] == "."
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert "pip install '.[drmaa,flower,metrics]'" in text and "install-mesos-extra.sh" in text
    assert re.search(r"^USER 10001", text, re.M), "services do not run as root"
    for volume in ("/srv/galaxy-tasks/jobs", "/srv/galaxy-tasks/home"):
        assert volume in text  # created owned by the service user, so named volumes are too


# -- systemd ---------------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: {line} outside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_argv(unit: dict, instance: str, key: str = "ExecStart") -> list[str]:
    """The command as systemd would run it: specifiers expanded, $VAR from Environment=."""
    env = dict(item.split("=", 1) for item in unit["Service"].get("Environment", []))
    line = unit["Service"][key][-1].lstrip("+-@!")
    line = line.replace("%i", instance).replace("%%", "%")
    argv = []
    for word in shlex.split(line):
        if word.startswith("$") and not word.startswith("${"):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(word)
    binary = Path(argv[0])
    assert binary.parent == Path("/opt/galaxy-tasks/bin"), f"{argv[0]}: the install's virtualenv"
    local = Path(os.environ.get("VIRTUAL_ENV", Path(__import__("sys").executable).parent.parent)) / "bin" / binary.name
    assert local.exists(), f"{binary.name} is not installed by this project's package ({local})"
    return argv


UNITS = {  # unit file -> instances to check
    "galaxy-tasks-worker@.service": [STEPS_QUEUE, ENDS_QUEUE, "local"],
    "galaxy-tasks-drmaa@.service": ["drmaa"],
    "galaxy-tasks-mesos.service": [""],
    "galaxy-tasks-beat.service": [""],
    "galaxy-tasks-flower.service": [""],
    "galaxy-tasks-metrics.service": [""],
    "galaxy-tasks-migrate.service": [""],
    "galaxy-tasks-health@.service": [STEPS_QUEUE, ENDS_QUEUE, "local"],
}


def test_systemd_units_run_real_entry_points():
    present = {p.name for p in SYSTEMD.iterdir() if p.is_file()}
    assert set(UNITS) | {"galaxy-tasks-health@.timer", "galaxy-tasks.target"} == present
    served = {}
    for name, instances in UNITS.items():
        unit = parse_unit(SYSTEMD / name)
        assert unit["Service"]["User"] == ["galaxy"], f"{name}: not root"
        for instance in instances:
            entry = check(exec_argv(unit, instance))
            if entry.kind in ("galaxy-tasks worker", "celery worker"):
                for queue in entry.queues:
                    served[queue] = name
                health = check(exec_argv(parse_unit(SYSTEMD / "galaxy-tasks-health@.service"), instance))
                if name == "galaxy-tasks-worker@.service":
                    assert node_name(health.node) == entry.node
    assert set(served) == {STEPS_QUEUE, ENDS_QUEUE, "local", "drmaa", "mesos"}
    migrate = parse_unit(SYSTEMD / "galaxy-tasks-migrate.service")
    assert exec_argv(migrate, "")[1:] == ["db", "upgrade"] and migrate["Service"]["Type"] == ["oneshot"]


def test_systemd_stops_are_graceful_and_spare_local_jobs():
    for name in ("galaxy-tasks-worker@.service", "galaxy-tasks-drmaa@.service", "galaxy-tasks-mesos.service"):
        service = parse_unit(SYSTEMD / name)["Service"]
        assert int(service["TimeoutStopSec"][-1]) > LONGEST_STEP_S, name
        assert service.get("KillSignal", ["SIGTERM"])[-1] == "SIGTERM", "Celery's warm shutdown"
        assert service["KillMode"][-1] in ("mixed", "process"), name
        assert "galaxy-tasks-migrate.service" in " ".join(parse_unit(SYSTEMD / name)["Unit"]["After"])
    drop_in = parse_unit(SYSTEMD / "galaxy-tasks-worker@local.service.d" / "keep-jobs.conf")
    assert drop_in["Service"]["KillMode"] == ["process"], "local jobs live in the worker's cgroup"
    worker = (SYSTEMD / "galaxy-tasks-worker@.service").read_text()
    assert "-n %i@%%h" in worker, "%h is systemd's home directory specifier: Celery's must be escaped"


def test_systemd_ends_worker_runs_ahead_of_the_others():
    """A job's end is recorded before the steps of a burst take its CPU: the ends worker's
    unit is the only one with a higher priority."""
    drop_in = parse_unit(SYSTEMD / "galaxy-tasks-worker@galaxy_tasks.ends.service.d" / "ahead.conf")
    assert int(drop_in["Service"]["Nice"][-1]) < 0
    for path in SYSTEMD.rglob("*"):
        if path.is_file() and path.parent.name != "galaxy-tasks-worker@galaxy_tasks.ends.service.d":
            assert "Nice=" not in path.read_text(), path


def test_systemd_flower_credentials_are_not_in_the_unit():
    text = (SYSTEMD / "galaxy-tasks-flower.service").read_text()
    service = parse_unit(SYSTEMD / "galaxy-tasks-flower.service")["Service"]
    assert service["LoadCredential"] == ["flower-users:/etc/galaxy-tasks/flower-users"]
    assert "GALAXY_TASKS_FLOWER_BASIC_AUTH_FILE=%d/flower-users" in service["Environment"]
    assert "GALAXY_TASKS_FLOWER_BASIC_AUTH=" not in text and "--unauthenticated" not in text
    assert not URL_PASSWORD.search(text)


def test_systemd_analyze_verifies_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        require("systemd-analyze", RuntimeError("apt-get install systemd"))
    units = []
    for path in sorted(p for p in SYSTEMD.iterdir() if p.is_file()):
        if "@." in path.name:  # a template is verified as an instance of it
            instance = "drmaa" if "drmaa" in path.name else "local"
            units.append(tmp_path / path.name.replace("@.", f"@{instance}."))
        else:
            units.append(tmp_path / path.name)
        units[-1].write_text(path.read_text())
    result = subprocess.run([analyze, "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, timeout=120)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable: No such file or directory" not in line]
    assert not problems, "\n".join(problems)


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m|h)?", str(text))
    assert match, text
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, None: 1}[match[2]]


# -- signed by default ------------------------------------------------------------------

SIGNING = ("GALAXY_TASKS_SIGNING_KEY", "GALAXY_TASKS_SIGNING_CERT", "GALAXY_TASKS_SIGNING_CERT_STORE")


def test_compose_signs_every_message_by_default(compose):
    for name, service in project_services(compose).items():
        environment = service.get("environment") or {}
        assert all(environment.get(key, "").startswith("/etc/galaxy-tasks/signing/") for key in SIGNING), name
        assert any(str(volume).endswith(":/etc/galaxy-tasks/signing:ro") for volume in service["volumes"]), name


def test_systemd_units_that_speak_to_the_broker_sign_by_default():
    for unit in ("galaxy-tasks-worker@.service", "galaxy-tasks-drmaa@.service", "galaxy-tasks-mesos.service",
                 "galaxy-tasks-beat.service", "galaxy-tasks-flower.service", "galaxy-tasks-health@.service"):
        text = (SYSTEMD / unit).read_text()
        for key in SIGNING:
            assert f"Environment={key}=/etc/galaxy-tasks/signing/" in text, (unit, key)


def test_signing_keys_script_makes_what_the_settings_name(tmp_path):
    if shutil.which("openssl") is None:
        require("openssl", FileNotFoundError("openssl"))
    result = subprocess.run(["bash", str(ROOT / "ops" / "signing-keys.sh"), str(tmp_path / "signing")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("key.pem", "cert.pem", "trusted/cert.pem"):
        assert (tmp_path / "signing" / name).stat().st_size > 0, name
    assert (tmp_path / "signing" / "key.pem").stat().st_mode & 0o077 == 0
