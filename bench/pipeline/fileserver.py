"""nginx on 127.0.0.1 serving the test files: sendfile, no access log, long keep-alive."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from processes import free_port, stop, wait_for_port

NGINX_CONF = """daemon off; worker_processes auto; pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; default_type application/octet-stream;
  keepalive_requests 1000000;
  client_body_temp_path {state}/tmp; proxy_temp_path {state}/tmp; fastcgi_temp_path {state}/tmp;
  uwsgi_temp_path {state}/tmp; scgi_temp_path {state}/tmp;
  server {{ listen 127.0.0.1:{port}; root {www}; }} }}
"""


class FileServer:
    """A private nginx for one sitting; `base_url` is where the files are, `pid` its master."""

    def __init__(self, www: Path, state: Path) -> None:
        self.www, self.state = www, state
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> FileServer:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise SystemExit("nginx is not installed: run bench/pipeline/setup.sh")
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.state / "nginx.conf"
        conf.write_text(NGINX_CONF.format(state=self.state, port=self.port, www=self.www))
        self.process = subprocess.Popen([nginx, "-p", str(self.state), "-c", str(conf)])
        wait_for_port(self.port, self.process, "nginx")
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)
