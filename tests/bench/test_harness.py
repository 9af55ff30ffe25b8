"""The benchmark harness end to end in its smallest configuration, so that it cannot rot.

Only the outputs are checked (every file there, every section in results.json), never the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.harness import SECTIONS, run_bench
from loadtest.plots import PLOTS


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_tiny_run_writes_every_output(tmp_path: Path) -> None:
    run_bench(tmp_path, quick=True, tiny=True)

    for name in ("report.md", "results.json", *PLOTS):
        path = tmp_path / name
        assert path.is_file(), f"{name} was not written"
        assert path.stat().st_size > 0, f"{name} is empty"
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in PLOTS)
    results = json.loads((tmp_path / "results.json").read_text())
    for section in SECTIONS:
        assert isinstance(results.get(section), dict), f"results.json has no {section} section"
        assert "error" not in results[section], f"{section} failed: {results[section].get('error')}"
    report = (tmp_path / "report.md").read_text()
    assert "## Summary" in report
    assert results["machine"]["cpu_model"] in report


def test_a_failing_section_is_recorded_and_the_rest_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadtest import harness

    def broken(quick: bool, tiny: bool) -> dict[str, object]:
        raise RuntimeError("emulator unreachable")

    monkeypatch.setitem(harness.RUNNERS, "memory", broken)
    results = run_bench(tmp_path, quick=True, tiny=True, sections=["memory"])

    assert results["memory"]["error"] == "RuntimeError: emulator unreachable"
    assert all("skipped" in results[name] for name in SECTIONS if name != "memory")
    report = (tmp_path / "report.md").read_text()
    assert "This section failed" in report and "emulator unreachable" in report
    assert all((tmp_path / name).stat().st_size > 0 for name in ("results.json", *PLOTS))
