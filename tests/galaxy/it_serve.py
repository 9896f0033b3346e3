"""An interactive tool's command playing its container monitor's part (no container engine
in the tests): serve a page on a free port of 127.0.0.1, once the gate file exists write
`container_runtime.json` in the job's working directory as Galaxy's container monitor does
(galaxy/job_execution/container_monitor.py: Docker's port mapping, by tool port), then serve
until stopped.

    it_serve.py TOOL_PORT PAGE GATE
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import sys
import time


def main() -> None:
    tool_port, page, gate = sys.argv[1:4]
    os.makedirs("site", exist_ok=True)
    shutil.copyfile(page, os.path.join("site", "index.html"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="site")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    while not os.path.exists(gate):
        time.sleep(0.05)
    runtime = {tool_port: {"tool_port": int(tool_port), "host": "127.0.0.1", "port": server.server_address[1],
                           "protocol": "tcp"}}
    # the tool runs in the job's working/ directory; the monitor writes one level up
    with open(os.path.join("..", "container_runtime.json.tmp"), "w") as handle:
        json.dump(runtime, handle)
    os.replace(os.path.join("..", "container_runtime.json.tmp"), os.path.join("..", "container_runtime.json"))
    server.serve_forever()


if __name__ == "__main__":
    main()
