"""Whether testcontainers can be used: a Docker daemon that answers within two seconds."""

from __future__ import annotations

import functools
import gc
import os
import socket
import warnings

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def _unix_socket_accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


@functools.cache
def docker_available() -> bool:
    """True when a Docker daemon answers a ping; `DOWNLINK_TEST_DOCKER=0` turns Docker off."""
    if os.environ.get("DOWNLINK_TEST_DOCKER", "").lower() in {"0", "false", "no"}:
        return False
    host = os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_HOST)
    # docker-py leaks its socket when the daemon's socket is missing (a ResourceWarning, an
    # error under filterwarnings=error): look at a local socket ourselves first.
    if host.startswith("unix://") and not _unix_socket_accepts(host.removeprefix("unix://")):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # only needed when probing

            client = docker.from_env(timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()  # collect anything docker-py left open while warnings are ignored
