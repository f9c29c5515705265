"""Run a test file again under gevent, as gunicorn's gevent workers run the apps.

Importing this patches nothing: ``tests/under_gevent.py`` (a pytest plugin) does,
in the process this starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def patched() -> bool:
    """This process runs under gevent's monkey-patching."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def assert_passes_under_gevent(test_file: str) -> None:
    """Every test of ``test_file`` passes in a process patched first."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.under_gevent", test_file],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
