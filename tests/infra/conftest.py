"""Fixtures for the infrastructure tests; the helpers are in bicep_templates.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bicep_templates import template  # noqa: E402


@pytest.fixture(scope="session")
def main() -> dict[str, Any]:
    return template("main")
