"""A real Galaxy server for tests: its configuration in a directory of its own, `galaxy-web`
from the Galaxy venv (ops/galaxy-venv.sh), SQLite, no conda, a bootstrap admin key.

The server can be killed (SIGKILL) and started again on the same data directory, as a
crashed Galaxy would be. With `handlers=True` the web process runs no job: job handler
processes (`galaxy-main --attach-to-pool job-handlers`, as Galaxy's gravity starts them)
take the jobs from the database, each under a name a test chooses, and can be killed,
restarted and renamed one by one.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from tests.galaxy.api import GalaxyApi
from tests.support.deployment import ROOT
from tests.support.redis_server import RedisServer, free_port
from tests.support.services import require

BOOTSTRAP_KEY = "gt-test-bootstrap-key-0123456789"

CAT = "echo 'probe header' > '$output' && cat '$input' >> '$output'"
FAIL = "echo 'about to fail' >&2; exit 3"
#: a command that records each run in the ledger, then waits for the gate (files in the
#: server's root, @ROOT@ in a command)
LEDGER_CAT = "echo '$output' >> @ROOT@/ledger && until [ -e @ROOT@/gate ]; do sleep 0.2; done && cat '$input' > '$output'"
#: who ran the tool, and what it read
WHOAMI = "id -un > '$output' && cat '$input' >> '$output'"
#: the port of the interactive tools' one entry point, inside their (absent) container
IT_TOOL_PORT = 8765
#: an interactive tool: serves its input on a free port and, once @ROOT@/it_gate exists,
#: says where in container_runtime.json as Galaxy's container monitor would (it_serve.py)
IT_SERVE = (f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).with_name('it_serve.py')))} "
            f"{IT_TOOL_PORT} '$input' @ROOT@/it_gate")
#: an interactive tool whose container monitor failed, as Galaxy's records it
IT_BROKEN = "echo 'no port mapping for the container' > ../container_monitor_exception.txt && sleep 600"
#: its input upper-cased, then how many entries the job saw in Galaxy's files directory (a job
#: on a destination without a shared filesystem sees none: it reads and writes staged copies)
UPPER_SEEN = ("tr '[:lower:]' '[:upper:]' < '$input' > '$output' && "
              "echo \"seen `ls -A @ROOT@/data/objects | wc -l`\" >> '$output'")
#: a config file that upper-cases the input, run by a tool that then adds a file of its own
#: directory (what a destination without a shared filesystem stages and rewrites)
CONFIG_SCRIPT = "tr '[:lower:]' '[:upper:]' < '$input'"
TOOL_NOTE = "staged_note.txt"
CONFIG_THEN_NOTE = f"sh '$script' > '$output' && cat '$__tool_directory__/{TOOL_NOTE}' >> '$output'"
#: tool id -> (command, environment: None is Galaxy's local runner, the default)
TOOLS = {
    "probe_cat": (CAT, None),
    "probe_cat_gt": (CAT, "gt_env"),
    "probe_fail_gt": (FAIL, "gt_env"),
    "probe_sleep_gt": ("sleep 600 && cat '$input' > '$output'", "gt_env"),
    "probe_sleep_local": ("sleep 600 && cat '$input' > '$output'", None),
    "probe_cat_local_celery": (CAT, "local_celery"),
    "probe_cat_contract": (CAT, "contract_env"),
    "probe_fail_contract": (FAIL, "contract_env"),
    "probe_cat_contract_celery": (CAT, "contract_celery_env"),
    "probe_cat_fast": (CAT, "gt_fast"),
    "probe_cat_sge": (CAT, "sge_env"),
    "probe_ledger_gt": (LEDGER_CAT, "gt_fast"),
    "probe_slow_gt": ("sleep 4 && cat '$input' > '$output'", "gt_short"),
    "probe_cat_signed": (CAT, "gt_signed_env"),
    "probe_sleep_signed": ("sleep 600 && cat '$input' > '$output'", "gt_signed_env"),
    "probe_refused": (CAT, "gt_refused"),
    "probe_precheck": (CAT, "gt_precheck"),
    "probe_tpv": (CAT, "tpv_dispatcher"),
    "probe_tpv_gpu": (CAT, "tpv_dispatcher"),
    "probe_tpv_timelimit": ("sleep 600 && cat '$input' > '$output'", "gt_fast"),
    "probe_whoami_gt": (WHOAMI, "gt_fast"),
    "probe_whoami_user": (WHOAMI, "gt_user"),
    "probe_gated_whoami_user": ("until [ -e @ROOT@/gate ]; do sleep 0.1; done && " + WHOAMI, "gt_user"),
    "probe_it_gt": (IT_SERVE, "gt_fast"),
    "probe_it_broken_gt": (IT_BROKEN, "gt_fast"),
    "probe_upper_staged": (UPPER_SEEN, "gt_staged"),
    "probe_config_staged": (CONFIG_THEN_NOTE, "gt_staged"),
}
#: tool id -> the <configfiles> of its XML
CONFIGFILES = {"probe_config_staged": f"<configfile name=\"script\"><![CDATA[{CONFIG_SCRIPT}]]></configfile>"}
#: the interactive tools among TOOLS (Galaxy's `tool_type="interactive"`, one entry point)
INTERACTIVE = ("probe_it_gt", "probe_it_broken_gt")
#: tool id -> the <requirements> of its XML (a tool's own time limit, which Galaxy's runners keep)
REQUIREMENTS = {"probe_tpv_timelimit": '<resource type="timelimit">3</resource>'}
#: the galaxy-tasks destination TPV sends probe_tpv and probe_tpv_gpu to (docs/galaxy.md#tpv)
TPV_DESTINATION = "slurm_tpv"
#: TPV's configuration: the tools' cores, memory (GB), GPUs and scheduler options, and the
#: galaxy-tasks destination that carries them (the config docs/galaxy.md documents)
TPV_CONFIG = f"""\
global:
  default_inherits: default
tools:
  default:
    abstract: true
    cores: 1
    mem: 0.25
    gpus: 0
  probe_tpv:
    cores: 2
    mem: 0.5
    params:
      native_specification: "--comment=tpv-probe"
  probe_tpv_gpu:
    gpus: 1
destinations:
  galaxy_tasks:
    runner: gt
    max_accepted_cores: 4
    max_accepted_gpus: 1
    params:
      galaxy_tasks_destination: {TPV_DESTINATION}
      cores: "{{cores}}"
      mem: "{{mem}}"
      gpus: "{{gpus or 0}}"
      metadata_strategy: directory_celery
"""
#: the signing plugin runner (gt_signed): its own Redis database, events queue and key
SIGNED_EVENTS_QUEUE = "galaxy.main.signed"
SIGNED_BROKER_DB = 3
#: the destination gt_refused names, which galaxy-tasks does not have
REFUSED_DESTINATION = "nowhere"
#: the second plugin runner: events on, a steps queue no galaxy-tasks worker serves, so a
#: test can play galaxy-tasks' side of the job-event contract (tests/galaxy/test_event_contract.py)
CONTRACT_STEPS_QUEUE = "galaxy_tasks_contract"
#: the galaxy-tasks destination without a shared filesystem that gt_staged names
STAGED_DESTINATION = "staged"
#: the galaxy-tasks destination of the tool routed to Grid Engine (sge_env)
SGE_DESTINATION = "sge"
#: the walltime of gt_short, whose resubmit rule sends a job that reached it to gt_long
SHORT_WALLTIME_S = 2
CONTRACT_EVENTS_QUEUE = "galaxy.main.contract"
#: the plugin runner whose jobs run as their Galaxy user's Unix user (gt_user), its events
#: queue, and the galaxy-tasks destination it sends them to (its run_as_command: the helper)
REAL_USER_EVENTS_QUEUE = "galaxy.main.real_user"
REAL_USER_DESTINATION = "local_user"
#: the pool Galaxy's job handler processes attach to (the name Galaxy looks for)
HANDLER_POOL = "job-handlers"
#: jobs one handler takes from the database at a time: a burst is spread over the handlers
HANDLER_MAX_GRAB = 10


def ensure_venv() -> Path:
    """The Galaxy venv, made or reused by ops/galaxy-venv.sh; GT_GALAXY_VENV chooses where
    (the root conftest clears GALAXY_TASKS_* variables, so it is passed on from here)."""
    env = dict(os.environ)
    if os.environ.get("GT_GALAXY_VENV"):
        env["GALAXY_TASKS_GALAXY_VENV"] = os.environ["GT_GALAXY_VENV"]
    try:
        result = subprocess.run(["bash", str(ROOT / "ops" / "galaxy-venv.sh")], env=env, capture_output=True,
                                text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"ops/galaxy-venv.sh did not run: {exc}") from exc
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"ops/galaxy-venv.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def celery_options(broker_url: str, metadata_strategy: str = "directory_celery") -> dict[str, Any]:
    """Galaxy options that turn on Galaxy's Celery (databases 1 and 2 of the given Redis as
    its broker and result backend) and by default set metadata in its worker instead of in
    the job; an environment's own `metadata_strategy` wins."""
    base = broker_url.rsplit("/", 1)[0]
    return {"enable_celery_tasks": True, "metadata_strategy": metadata_strategy,
            "celery_conf": {"broker_url": f"{base}/1", "result_backend": f"{base}/2"}}


def own_redis(directory: Path) -> Iterator[RedisServer]:
    """A Redis of a Galaxy's own (galaxy-tasks' broker and Galaxy's Celery), killed after."""
    try:
        server = RedisServer(directory).start()
    except (OSError, RuntimeError) as exc:
        require("redis-server", exc)
    yield server
    server.kill()


def tool_xml(tool_id: str, command: str) -> str:
    requirements = REQUIREMENTS.get(tool_id, "")
    configfiles = f"<configfiles>{CONFIGFILES[tool_id]}</configfiles>" if tool_id in CONFIGFILES else ""
    interactive = tool_id in INTERACTIVE
    tool_type = ' tool_type="interactive"' if interactive else ""
    entry_points = (f'<entry_points><entry_point name="{tool_id} page" requires_domain="False">'
                    f"<port>{IT_TOOL_PORT}</port></entry_point></entry_points>") if interactive else ""
    return textwrap.dedent(f"""\
        <tool id="{tool_id}" name="{tool_id}" version="0.1.0" profile="21.05"{tool_type}>
            <requirements>{requirements}</requirements>
            {entry_points}
            <command><![CDATA[{command}]]></command>
            {configfiles}
            <inputs><param name="input" type="data" format="txt,tabular" label="Input"/></inputs>
            <outputs><data name="output" format="txt"/></outputs>
        </tool>
        """)


class GalaxyServer:
    def __init__(self, venv: Path, root: Path, broker_url: str, *,
                 galaxy_options: Mapping[str, Any] | None = None, local_workers: int = 2,
                 handlers: bool = False) -> None:
        self.venv = venv
        self.local_workers = local_workers
        self.handlers = handlers
        self.handler_procs: dict[str, subprocess.Popen] = {}
        self.root = root
        self.broker_url = broker_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # each handler process writes its own (the plugin puts its server_name in the path)
        self.stats_file = root / ("gt-stats-{server_name}.json" if handlers else "gt-stats.json")
        self.contract_stats_file = root / "gt-contract-stats.json"
        self.signed_stats_file = root / "gt-signed-stats.json"
        self.real_user_stats_file = root / "gt-real-user-stats.json"
        self.signed_broker_url = f"{broker_url.rsplit('/', 1)[0]}/{SIGNED_BROKER_DB}"
        self.signing = self._signing_keys()
        self.log = root / "galaxy.log"
        self.proc: subprocess.Popen | None = None
        self.celery: subprocess.Popen | None = None
        self._write_config(dict(galaxy_options or {}))
        self.admin = GalaxyApi(self.url, BOOTSTRAP_KEY)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def ledger(self) -> Path:
        """One line for each run of probe_ledger_gt's command."""
        return self.root / "ledger"

    @property
    def gate(self) -> Path:
        """probe_ledger_gt's command waits until this file exists."""
        return self.root / "gate"

    @property
    def it_gate(self) -> Path:
        """probe_it_gt says where it serves (container_runtime.json) once this file exists."""
        return self.root / "it_gate"

    @property
    def interactivetools_map(self) -> Path:
        """The map Galaxy keeps for its interactive tools proxy (entry point -> host, port)."""
        return self.data_dir / "interactivetools_map.sqlite"

    def _signing_keys(self) -> dict[str, str]:
        """A key, its certificate and a store trusting it, shared by the gt_signed runner
        and the signing galaxy-tasks deployment of a test."""
        from tests.integration.test_security import _certificate

        key, cert = _certificate(self.root / "signing", "galaxy")
        store = self.root / "signing" / "store"
        store.mkdir()
        (store / "galaxy.pem").write_bytes(cert.read_bytes())
        return {"signing_key": str(key), "signing_cert": str(cert), "signing_cert_store": str(store)}

    def _write_config(self, galaxy_options: dict[str, Any]) -> None:
        config = self.root / "config"
        tools = self.root / "tools"
        for directory in (config, tools, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        (tools / TOOL_NOTE).write_text("a file of the tool's own\n")
        for tool_id, (command, _) in TOOLS.items():
            (tools / f"{tool_id}.xml").write_text(tool_xml(tool_id, command.replace("@ROOT@", str(self.root))))
        entries = "\n".join(f'    <tool file="{tools / f"{t}.xml"}"/>' for t in TOOLS)
        (config / "tool_conf.xml").write_text(
            f'<?xml version="1.0"?>\n<toolbox>\n  <section id="probe" name="Probe">\n{entries}\n  </section>\n</toolbox>\n')
        (config / "tool_data_table_conf.xml").write_text("<tables/>\n")  # no data tables fetched from the web
        (config / "tpv.yml").write_text(TPV_CONFIG)
        routed = "\n".join(f"- id: {t}\n  environment: {env}" for t, (_, env) in TOOLS.items() if env)
        # several handlers: one instance name for all, so they share the ids and events queue
        instance = "\n                instance: main" if self.handlers else ""
        (config / "job_conf.yml").write_text(textwrap.dedent(f"""\
            runners:
              local:
                load: galaxy.jobs.runners.local:LocalJobRunner
                workers: {self.local_workers}
              gt:
                load: galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner
                workers: 2
                broker_url: {self.broker_url}
                stats_file: {self.stats_file}{instance}
              gt_contract:
                load: galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner
                workers: 1
                broker_url: {self.broker_url}
                steps_queue: {CONTRACT_STEPS_QUEUE}
                events: true
                events_queue: {CONTRACT_EVENTS_QUEUE}
                stats_file: {self.contract_stats_file}{instance}
              gt_signed:
                load: galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner
                workers: 1
                broker_url: {self.signed_broker_url}
                events_queue: {SIGNED_EVENTS_QUEUE}
                signing_key: {self.signing["signing_key"]}
                signing_cert: {self.signing["signing_cert"]}
                signing_cert_store: {self.signing["signing_cert_store"]}
                stats_file: {self.signed_stats_file}{instance}
              gt_user:
                load: galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner
                workers: 1
                broker_url: {self.broker_url}
                events_queue: {REAL_USER_EVENTS_QUEUE}
                run_as_real_user: true
                stats_file: {self.real_user_stats_file}{instance}
            execution:
              default: local_env
              environments:
                local_env:
                  runner: local
                local_celery:
                  runner: local
                  metadata_strategy: directory_celery
                gt_env:
                  runner: gt
                  galaxy_tasks_cores: 2
                gt_fast:
                  runner: gt
                  metadata_strategy: directory_celery
                sge_env:
                  runner: gt
                  galaxy_tasks_destination: {SGE_DESTINATION}
                  metadata_strategy: directory_celery
                gt_short:
                  runner: gt
                  galaxy_tasks_walltime: {SHORT_WALLTIME_S}
                  metadata_strategy: directory_celery
                  resubmit:
                    - condition: walltime_reached
                      environment: gt_long
                gt_long:
                  runner: gt
                  galaxy_tasks_walltime: 600
                  metadata_strategy: directory_celery
                gt_staged:
                  runner: gt
                  galaxy_tasks_destination: {STAGED_DESTINATION}
                  metadata_strategy: directory_celery
                gt_user:
                  runner: gt_user
                  galaxy_tasks_destination: {REAL_USER_DESTINATION}
                  metadata_strategy: directory_celery
                gt_signed_env:
                  runner: gt_signed
                  metadata_strategy: directory_celery
                gt_refused:
                  runner: gt
                  galaxy_tasks_destination: {REFUSED_DESTINATION}
                gt_precheck:
                  runner: gt
                  galaxy_tasks_cores: 3000000000
                contract_env:
                  runner: gt_contract
                contract_celery_env:
                  runner: gt_contract
                  metadata_strategy: directory_celery
                tpv_dispatcher:
                  runner: dynamic
                  type: python
                  function: map_tool_to_destination
                  rules_module: tpv.rules
                  tpv_config_files:
                    - {config / "tpv.yml"}
            tools:
            """) + routed + "\n" + self._handling())
        galaxy = {
            # each handler process is named on its command line (--server-name), which a
            # server_name here would override; the web process is then Galaxy's default "main"
            **({} if self.handlers else {"server_name": "main"}),
            "data_dir": str(self.data_dir),
            "database_connection": f"sqlite:///{self.data_dir}/universe.sqlite?isolation_level=IMMEDIATE",
            "tool_config_file": str(config / "tool_conf.xml"),
            "job_config_file": str(config / "job_conf.yml"),
            "conda_auto_init": False,
            "conda_auto_install": False,
            "dependency_resolvers": [],
            "admin_users": "admin@example.org",
            "bootstrap_admin_api_key": BOOTSTRAP_KEY,
            "id_secret": "gt-test-id-secret-0123456789abcdef",
            "allow_user_creation": True,
            "enable_celery_tasks": False,
            "check_migrate_databases": True,
            "watch_tools": False,
            "require_login": False,
            "cleanup_job": "never",
            "enable_mulled_containers": False,
            "involucro_auto_init": False,
            "tool_data_table_config_path": str(config / "tool_data_table_conf.xml"),
            # interactive tools (the proxy itself is not started: its map is read by tests)
            "interactivetools_enable": True,
            "interactivetools_map": str(self.interactivetools_map),
            **galaxy_options,
        }
        self.database_connection = galaxy["database_connection"]
        (config / "galaxy.yml").write_text(yaml.safe_dump({"gravity": {"galaxy_root": str(self.root)},
                                                           "galaxy": galaxy}))

    def _handling(self) -> str:
        """job_conf's `handling`: with handler processes, they take jobs from the database
        (db-skip-locked, Galaxy's method for a pool of handlers), at most HANDLER_MAX_GRAB at a time."""
        if not self.handlers:
            return ""
        return f"handling:\n  assign: [db-skip-locked]\n  max_grab: {HANDLER_MAX_GRAB}\n"

    def handler_stats_file(self, name: str) -> Path:
        """The counters of the gt runner in the handler process `name`."""
        return Path(str(self.stats_file).replace("{server_name}", name))

    def handler_log(self, name: str) -> Path:
        return self.root / f"handler-{name}.log"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GALAXY_TASKS_", "VIRTUAL_ENV", "PYTHON"))}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        # The venv is shared by every checkout on the machine; this checkout's plugin comes
        # first on the path, whichever checkout the venv's editable install points at.
        plugin_path = self.root / "pythonpath"
        plugin_path.mkdir(exist_ok=True)
        if not (plugin_path / "galaxy_tasks").is_symlink():
            (plugin_path / "galaxy_tasks").symlink_to(ROOT / "galaxy_tasks")
        env["PYTHONPATH"] = str(plugin_path)
        return env

    def start(self, timeout: float = 600) -> GalaxyServer:
        handle = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "galaxy-web"), "-c", str(self.root / "config" / "galaxy.yml"),
             "-b", f"127.0.0.1:{self.port}"],
            cwd=self.root, env=self.environment(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"galaxy-web exited with {self.proc.returncode}:\n{self.tail()}")
            if self.admin.reachable():
                return self
            time.sleep(0.5)
        raise TimeoutError(f"Galaxy not up after {timeout} s:\n{self.tail()}")

    def start_handler(self, name: str, timeout: float = 600) -> subprocess.Popen:
        """A job handler process named `name`, once Galaxy says it runs (its jobs of an
        earlier process of that name recovered)."""
        assert self.handlers, "a Galaxy made with handlers=True"
        log = self.handler_log(name)
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as handle:
            proc = subprocess.Popen(
                [str(self.venv / "bin" / "galaxy-main"), "-c", str(self.root / "config" / "galaxy.yml"),
                 "--server-name", name, "--attach-to-pool", HANDLER_POOL, "--pid-file", str(self.root / f"{name}.pid")],
                cwd=self.root, env=self.environment(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.handler_procs[name] = proc
        deadline = time.monotonic() + timeout
        while f"Galaxy server instance '{name}' is running" not in self._read(log, offset):
            if proc.poll() is not None:
                raise RuntimeError(f"handler {name} exited with {proc.returncode}:\n{self._read(log, offset)[-6000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"handler {name} not up after {timeout} s:\n{self._read(log, offset)[-6000:]}")
            time.sleep(0.5)
        return proc

    def stop_handler(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Ends the handler process `name`: SIGTERM is Galaxy's shutdown, SIGKILL a crash."""
        proc = self.handler_procs.pop(name)
        _end(proc, sig, wait=60)

    @staticmethod
    def _read(log: Path, offset: int) -> str:
        with open(log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def start_celery(self) -> subprocess.Popen:
        """Galaxy's Celery worker, as gravity starts it (threads pool, Galaxy's queues); for a
        server made with `celery_options`."""
        env = self.environment()
        env["GALAXY_CONFIG_FILE"] = str(self.root / "config" / "galaxy.yml")
        with open(self.root / "celery.log", "ab") as log:
            self.celery = subprocess.Popen(
                [str(self.venv / "bin" / "celery"), "--app", "galaxy.celery", "worker", "--concurrency", "2",
                 "--loglevel", "INFO", "--pool", "threads", "--queues", "celery,galaxy.internal,galaxy.external"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.celery

    def stop_celery(self) -> None:
        if self.celery is not None and self.celery.poll() is None:
            os.killpg(self.celery.pid, signal.SIGTERM)
            try:
                self.celery.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.celery.pid, signal.SIGKILL)
                self.celery.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of Galaxy's shutdown runs."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """The web process and every handler process."""
        for name in list(self.handler_procs):
            self.stop_handler(name)
        self._signal(signal.SIGTERM, wait=60)

    def _signal(self, sig: int, wait: float = 30) -> None:
        if self.proc is not None:
            _end(self.proc, sig, wait)

    def tail(self, size: int = 6000) -> str:
        """The end of the web process's log and of each handler's there has been."""
        logs = [self.log, *sorted(self.root.glob("handler-*.log"))]
        return "".join(log.read_text(errors="replace")[-size:] for log in logs if log.exists())

    def task_id(self, job_id: str, attempt: int = 0) -> str:
        """The galaxy-tasks id the plugin gives a Galaxy job (encoded id) of this server
        ("main"), and of its resubmission `attempt`."""
        return f"g-main-{self.admin.decode(job_id)}" + (f"-r{attempt}" if attempt else "")

    def working_directory(self, job_id: int) -> Path:
        """Galaxy's job working directory (jobs_directory/<000>/<id>)."""
        return self.data_dir / "jobs_directory" / f"{job_id // 1000:03d}" / str(job_id)


def _end(proc: subprocess.Popen, sig: int, wait: float) -> None:
    """Signals a process's group; SIGKILL if it has not ended after `wait` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
