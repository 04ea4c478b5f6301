"""The benchmark program runs end to end in its smoke mode and reports every section with positive numbers."""

import os
import re
import subprocess
import sys

from conftest import REPO, binary


def test_bench_quick_reports_every_section(tmp_path):
    bin_dir = binary().parent
    if not os.access(bin_dir / "bench-floor", os.X_OK):
        raise AssertionError(f"bench-floor not found next to {binary()}: build with cargo build --workspace")
    # Smaller than --quick alone: the debug binaries are slow.
    cmd = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--bin-dir", str(bin_dir),
           "--workdir", str(tmp_path), "--events", "5000", "--seconds", "1", "--rate", "2000",
           "--ingest-events", "5000", "--baseline-events", "500", "--sdk-events", "300", "--markdown"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    report = out.stdout
    rows = {}
    for line in report.splitlines():
        m = re.match(r"^(floor|saturation|fixed \d+/s|ingest|baseline)\s+(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)",
                     line)
        if m:
            rows[m.group(1)] = [float(x) for x in m.groups()[2:]]
    assert set(rows) == {"floor", "saturation", "fixed 2000/s", "ingest", "baseline"}, report
    for name, (events, per_s, mb_s, cores) in rows.items():
        assert events > 0 and per_s > 0 and mb_s > 0 and cores > 0, f"{name}: {report}"
    latency = re.search(r"^saturation\s+local\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)",
                        report, re.M)
    assert latency and all(int(x) > 0 for x in latency.groups()), report
    # The sequential analytics-python client: every event acknowledged, none failed.
    sdk = re.search(r"^sequential SDK\s+local\s+(\d+)\s+(\d+)\s.*\s(\d+)$", report, re.M)
    assert sdk, report
    assert int(sdk.group(1)) == 300 and int(sdk.group(2)) > 0 and int(sdk.group(3)) == 0, report
    assert "ratios:" in report and "floor/handler" in report and "handler/baseline" in report
    assert "| saturation | local |" in report


def test_bench_versus_runs_two_builds_alternately_and_compares_them(tmp_path):
    bin_dir = binary().parent
    # The same build twice: each scenario runs four times, each on a lake of its own, and the comparison pairs them.
    cmd = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--bin-dir", str(bin_dir), "--versus",
           str(bin_dir), "--repeat", "2", "--workdir", str(tmp_path), "--events", "2000",
           "--skip", "fixed,ingest,sdk,baseline"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    report = out.stdout
    assert len(re.findall(r"^saturation\s+local\s+2000\s", report, re.M)) == 2, report
    assert len(re.findall(r"^floor\s+memory\s+2000\s", report, re.M)) == 2, report
    assert f"versus: {bin_dir} → {bin_dir}, 2 alternating run(s) of each" in report, report
    number = r"[\d,]+(?:\.\d+)?"
    for scenario in ("floor \\(memory\\)", "saturation \\(local\\)"):
        m = re.search(rf"^  {scenario}: events per CPU second ({number})(?:–{number})? → ({number})(?:–{number})? "
                      rf"\(({number})(?:–({number}))?x in each pair\)", report, re.M)
        assert m, report
        low, high = float(m.group(3)), float(m.group(4) or m.group(3))
        assert float(m.group(1).replace(",", "")) > 0 and float(m.group(2).replace(",", "")) > 0, report
        assert 0 < low <= high, report
    # Latencies past a second are written with a thousands separator, as every figure of the report is.
    assert re.search(rf"^  saturation \(local\): .*; p50 ms {number}(–{number})? → {number}(–{number})?; p99 ms .*; "
                     rf"peak RSS MiB", report, re.M), report
    lakes = sorted(p.name for p in (tmp_path / "lakes").iterdir())
    assert lakes == ["local-saturation", "local-saturation-2", "local-saturation-3", "local-saturation-4"], lakes
    assert all((tmp_path / "lakes" / name / "segment" / "tracks" / "_delta_log").is_dir() for name in lakes), lakes


def test_bench_repeat_needs_a_build_to_compare_with():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--repeat", "2", "--bin-dir", "."],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--repeat goes with --versus" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--repeat", "0", "--versus", ".",
                          "--bin-dir", "."], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--repeat 0: a count of runs, 1 or more" in out.stderr, out.stderr
