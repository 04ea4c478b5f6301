"""checkov's Bicep policies over infra/: nothing fails, every template parses, and every skip in the
templates is one checkov actually applied, with its written reason."""

from __future__ import annotations

import json
import os
import re
import subprocess
import venv
from pathlib import Path

import pytest

from bicep_templates import INFRA, ROOT

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segment-delta" / "checkov"


def checkov_executable() -> str:
    """$CHECKOV if set; otherwise a virtual environment of its own, created on first use (checkov's
    pins conflict with pytest's, so it cannot share this interpreter's packages)."""
    if os.environ.get("CHECKOV"):
        return os.environ["CHECKOV"]
    exe = VENV / "bin" / "checkov"
    requirements = HERE / "requirements-checkov.txt"
    stamp = VENV / "requirements.txt"
    if not exe.exists() or not stamp.exists() or stamp.read_text() != requirements.read_text():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-r", str(requirements)],
            check=True,
        )
        stamp.write_text(requirements.read_text())
    return str(exe)


@pytest.fixture(scope="module")
def report() -> dict:
    proc = subprocess.run(
        [checkov_executable(), "--framework", "bicep", "-d", str(INFRA), "--output", "json", "--skip-download",
         "--compact"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}):\n{proc.stderr}"
    data = json.loads(proc.stdout)
    # One framework gives one report (a list only when several frameworks ran).
    data = data[0] if isinstance(data, list) else data
    if proc.returncode != 0:
        failed = [(c["check_id"], c["file_path"], c["resource"]) for c in data["results"]["failed_checks"]]
        pytest.fail(f"checkov failed: {failed}\n{proc.stderr[-2000:]}")
    return data


def test_checkov_passes_with_every_template_parsed(report):
    summary = report["summary"]
    assert summary["failed"] == 0
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    scanned = {c["file_path"] for c in report["results"].get("passed_checks", [])}
    scanned |= {c["file_path"] for c in report["results"].get("skipped_checks", [])}
    # The modules whose resource types checkov has Bicep policies for.
    for name in ("lake", "hoststorage", "eventhubs", "keyvault", "secret", "functionapp"):
        assert f"/modules/{name}.bicep" in scanned, f"checkov checked nothing in {name}.bicep"


def test_every_skip_comment_is_applied_with_its_reason(report):
    written = set()
    for path in INFRA.rglob("*.bicep"):
        for m in re.finditer(r"//checkov:skip=(\S+?):(.+)", path.read_text()):
            written.add(("/" + str(path.relative_to(INFRA)), m.group(1), m.group(2).strip()))
    applied = {
        (c["file_path"], c["check_id"], c["check_result"].get("suppress_comment", "").strip())
        for c in report["results"].get("skipped_checks", [])
    }
    assert {(f, c) for f, c, _ in written} == {(f, c) for f, c, _ in applied}
    assert written >= applied
