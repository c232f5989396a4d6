"""The whole pipeline as subprocesses: a gateway, downloaders, and tokens for two users."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.services import ServiceLauncher, ServiceProcess

FINAL = {"completed", "partial", "failed", "cancelled"}


@dataclass
class Pipeline:
    """Handles on a running stack for one test."""

    url: str
    env: dict[str, str]
    storage_root: Path
    launcher: ServiceLauncher
    gateway: ServiceProcess | None = None
    downloaders: list[ServiceProcess] = field(default_factory=list)
    exporters: list[ServiceProcess] = field(default_factory=list)
    processors: list[ServiceProcess] = field(default_factory=list)
    clients: list[httpx.Client] = field(default_factory=list)

    def start_gateway(self, **env: str) -> ServiceProcess:
        port = self.url.rsplit(":", 1)[1]
        self.gateway = self.launcher.start("gateway", "--port", port, env={**self.env, **env})
        self.gateway.wait_ready(self.url, timeout=30)
        return self.gateway

    def start_downloader(self, **env: str) -> ServiceProcess:
        process = self.launcher.start("downloader", env={**self.env, **env})
        process.wait_for_log(r"downloader \S+ reading", timeout=20)
        self.downloaders.append(process)
        return process

    def start_processor(self, *args: str, **env: str) -> ServiceProcess:
        """A processor (`args` such as "--concurrency", "2"), once its pool is up and reading."""
        process = self.launcher.start("processor", *args, env={**self.env, **env})
        process.wait_for_log(r"processor \S+ reading", timeout=60)
        self.processors.append(process)
        return process

    def start_exporter(self, **env: str) -> ServiceProcess:
        process = self.launcher.start("exporter", env={**self.env, **env})
        process.wait_for_log(r"exporter \S+ reading", timeout=20)
        self.exporters.append(process)
        return process

    def token(self, name: str, *, admin: bool = False) -> str:
        argv = [sys.executable, "-m", "services.cli", "token", "create", name]
        result = subprocess.run(
            [*argv, "--admin"] if admin else argv,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return result.stdout.strip().splitlines()[-1]

    def client(self, name: str, *, admin: bool = False) -> httpx.Client:
        client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token(name, admin=admin)}"},
            timeout=30,
            trust_env=False,
        )
        self.clients.append(client)
        return client

    def wait_job(self, client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
        """Poll the job until it ends; fail with its last status otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = client.get(f"/api/v1/downloads/jobs/{job_id}").json()
            if status["status"] in FINAL:
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} did not end within {timeout} s: {status}")
            time.sleep(0.1)

    def result(self, client: httpx.Client, job_id: str) -> dict[str, Any]:
        response = client.get(f"/api/v1/downloads/jobs/{job_id}/result")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def pipeline_factory(
    redis_url: str, database_url: str, tmp_path: Path, service_launcher: ServiceLauncher
) -> Iterator[PipelineFactory]:
    """Make a stack with a gateway on a free port; `env` overrides the services' settings.

    Downloaders are started by the test with its own knobs.
    """
    made: list[Pipeline] = []

    def make(**env: str) -> Pipeline:
        storage_root = tmp_path / "storage"
        port = free_port()
        base_env = {
            "DOWNLINK_REDIS_URL": redis_url,
            "DOWNLINK_DATABASE_URL": database_url,
            "DOWNLINK_STORAGE_URL": f"file://{storage_root}",
            "DOWNLINK_HTTP_HOST": "127.0.0.1",
            "DOWNLINK_HTTP_PORT": str(port),
            "DOWNLINK_PROGRESS_INTERVAL": "0.2",
        }
        stack = Pipeline(
            f"http://127.0.0.1:{port}", {**base_env, **env}, storage_root, service_launcher
        )
        stack.start_gateway()
        made.append(stack)
        return stack

    yield make
    for stack in made:
        for client in stack.clients:
            client.close()


@pytest.fixture
def pipeline(pipeline_factory: PipelineFactory) -> Pipeline:
    """A stack with default settings."""
    return pipeline_factory()
