"""A real Galaxy server for tests: its configuration in a directory of its own, `galaxy-web`
from the Galaxy venv (ops/galaxy-venv.sh), SQLite, no conda, a bootstrap admin key.

The server can be killed (SIGKILL) and started again on the same data directory, as a
crashed Galaxy would be.
"""
from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from tests.galaxy.api import GalaxyApi
from tests.support.redis_server import free_port

BOOTSTRAP_KEY = "gt-test-bootstrap-key-0123456789"

#: tool id -> (command, routed to the galaxy-tasks environment)
TOOLS = {
    "probe_cat": ("echo 'probe header' > '$output' && cat '$input' >> '$output'", False),
    "probe_cat_gt": ("echo 'probe header' > '$output' && cat '$input' >> '$output'", True),
    "probe_fail_gt": ("echo 'about to fail' >&2; exit 3", True),
    "probe_sleep_gt": ("sleep 600 && cat '$input' > '$output'", True),
}


def tool_xml(tool_id: str, command: str) -> str:
    return textwrap.dedent(f"""\
        <tool id="{tool_id}" name="{tool_id}" version="0.1.0" profile="21.05">
            <command><![CDATA[{command}]]></command>
            <inputs><param name="input" type="data" format="txt,tabular" label="Input"/></inputs>
            <outputs><data name="output" format="txt"/></outputs>
        </tool>
        """)


class GalaxyServer:
    def __init__(self, venv: Path, root: Path, broker_url: str, *, events: bool = False,
                 extra_galaxy: str = "") -> None:
        self.venv = venv
        self.events = events
        self.root = root
        self.broker_url = broker_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats_file = root / "gt-stats.json"
        self.log = root / "galaxy.log"
        self.proc: subprocess.Popen | None = None
        self._write_config(extra_galaxy)
        self.admin = GalaxyApi(self.url, BOOTSTRAP_KEY)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _write_config(self, extra_galaxy: str) -> None:
        config = self.root / "config"
        tools = self.root / "tools"
        for directory in (config, tools, self.data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for tool_id, (command, _) in TOOLS.items():
            (tools / f"{tool_id}.xml").write_text(tool_xml(tool_id, command))
        entries = "\n".join(f'    <tool file="{tools / f"{t}.xml"}"/>' for t in TOOLS)
        (config / "tool_conf.xml").write_text(
            f'<?xml version="1.0"?>\n<toolbox>\n  <section id="probe" name="Probe">\n{entries}\n  </section>\n</toolbox>\n')
        (config / "tool_data_table_conf.xml").write_text("<tables/>\n")  # no data tables fetched from the web
        routed = "\n".join(f"- id: {t}\n  environment: gt_env" for t, (_, gt) in TOOLS.items() if gt)
        (config / "job_conf.yml").write_text(textwrap.dedent(f"""\
            runners:
              local:
                load: galaxy.jobs.runners.local:LocalJobRunner
                workers: 2
              gt:
                load: galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner
                workers: 2
                broker_url: {self.broker_url}
                stats_file: {self.stats_file}
                events: {"true" if self.events else "false"}
            execution:
              default: local_env
              environments:
                local_env:
                  runner: local
                gt_env:
                  runner: gt
            tools:
            """) + routed + "\n")
        (config / "galaxy.yml").write_text(textwrap.dedent(f"""\
            gravity:
              galaxy_root: {self.root}
            galaxy:
              server_name: main
              data_dir: {self.data_dir}
              database_connection: sqlite:///{self.data_dir}/universe.sqlite?isolation_level=IMMEDIATE
              tool_config_file: {config}/tool_conf.xml
              job_config_file: {config}/job_conf.yml
              conda_auto_init: false
              conda_auto_install: false
              dependency_resolvers: []
              admin_users: admin@example.org
              bootstrap_admin_api_key: {BOOTSTRAP_KEY}
              id_secret: gt-test-id-secret-0123456789abcdef
              allow_user_creation: true
              enable_celery_tasks: false
              check_migrate_databases: true
              watch_tools: false
              require_login: false
              cleanup_job: never
              enable_mulled_containers: false
              involucro_auto_init: false
              tool_data_table_config_path: {config}/tool_data_table_conf.xml
            """) + textwrap.indent(extra_galaxy, "  "))

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GALAXY_TASKS_", "VIRTUAL_ENV", "PYTHON"))}
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def start(self, timeout: float = 240) -> "GalaxyServer":
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

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of Galaxy's shutdown runs."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=60)

    def _signal(self, sig: int, wait: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def tail(self, size: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def working_directory(self, job_id: int) -> Path:
        """Galaxy's job working directory (jobs_directory/<000>/<id>)."""
        return self.data_dir / "jobs_directory" / f"{job_id // 1000:03d}" / str(job_id)
