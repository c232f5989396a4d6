"""Test support: throwaway servers, a local HTTP file server and a service launcher.

The fixtures that use these live in `tests/conftest.py`; import helpers from the submodules
(`tests.support.file_server`, `tests.support.services`, ...).
"""

from tests.support.ports import free_port

__all__ = ["free_port"]
