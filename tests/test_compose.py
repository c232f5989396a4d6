"""compose.yaml is valid and wires the stack together (checked with `docker-compose config`).

Only the file is checked; no engine is needed. CI installs Debian's docker-compose, so there a
missing binary is a failure rather than a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"redis", "postgres", "migrate", "gateway", "downloader", "processor", "exporter"}


def _compose(*args: str) -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("docker-compose is not installed (.ci/run installs it)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    result = subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_compose("--profile", "tracing", "config"))
    return loaded


def test_compose_config_is_valid() -> None:
    _compose("config", "-q")


def test_every_service_is_defined(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {*SERVICES, "jaeger"}
    assert config["services"]["jaeger"]["profiles"] == ["tracing"]


def test_services_wait_for_their_dependencies(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    gateway = services["gateway"]["depends_on"]
    assert gateway["migrate"]["condition"] == "service_completed_successfully"
    assert gateway["redis"]["condition"] == "service_healthy"
    for name in ("downloader", "processor", "exporter"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "postgres" not in services[name]["depends_on"]  # workers never need PostgreSQL
    for name in SERVICES - {"migrate"}:
        assert "healthcheck" in services[name], name


def test_app_services_point_at_the_compose_hosts(config: dict[str, Any]) -> None:
    for name in ("migrate", "gateway", "downloader", "processor", "exporter"):
        service = config["services"][name]
        env = service["environment"]
        assert service["image"] == "downlink:local"
        assert service["command"] == [name]
        assert env["DOWNLINK_REDIS_URL"].startswith("redis://redis:6379/")
        assert env["DOWNLINK_DATABASE_URL"].startswith("postgresql://postgres@postgres:5432/")
        assert env["DOWNLINK_STORAGE_URL"] == "file:///data"
    assert config["services"]["gateway"]["environment"]["DOWNLINK_HTTP_HOST"] == "0.0.0.0"


def test_dockerfile_runs_the_downlink_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "pip install ." in dockerfile
    assert 'ENTRYPOINT ["downlink"]' in dockerfile
