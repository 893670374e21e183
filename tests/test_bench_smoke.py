"""Smoke test of the benchmark: ``bench/bench_subprocess.py --quick`` runs to the end.

It checks that every measurement ran and was reported, never how fast anything was (timings
on a shared machine are not something a test can assert).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_subprocess.py"

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
dspy = pytest.importorskip("dspy")
if not hasattr(dspy, "LocalInterpreter"):
    pytest.skip("the benchmark compares against dspy.LocalInterpreter (DSPy 3.4 and later)", allow_module_level=True)

ROW_LABELS = (
    "start (construct + start)",
    "execute x += 1",
    "execute x += 1 after 20 ms idle",
    "tool call f(1), whole execute",
    "tool call f(1) after 20 ms idle",
    "tool per call (100 in one execute)",
    "10 MB variable, first execute",
    "10 MB variable, repeated execute",
)
ROW_KEYS = ("start", "execute", "execute_idle", "tool", "tool_idle", "tool_per_call", "doc_first", "doc_repeated")
#: Rows with a target on the means too (a second line, "<label>, mean"), and that target.
MEAN_TARGETS = {"execute": "<= 0.5x", "execute_idle": "<= 0.8x", "tool": "<= 0.5x", "tool_idle": "<= 0.8x"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict]:
    results_path = tmp_path_factory.mktemp("bench") / "results.json"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(results_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, f"benchmark failed:\n{completed.stdout}\n{completed.stderr}"
    return completed, json.loads(results_path.read_text(encoding="utf-8"))


def test_quick_run_prints_every_row_with_both_medians_and_a_verdict(quick_run) -> None:
    completed, results = quick_run
    lines = completed.stdout.splitlines()
    mean_labels = [results["rows"][key]["label"] + ", mean" for key in MEAN_TARGETS]
    for label in ROW_LABELS + tuple(mean_labels):
        matching = [line for line in lines if line.startswith(label + "  ")]
        assert len(matching) == 1, f"row {label!r} missing from:\n{completed.stdout}"
        cells = matching[0][len(label):].split()
        sk_ms, local_ms, ratio = float(cells[0]), float(cells[1]), cells[2]
        assert sk_ms > 0 and local_ms > 0
        assert ratio.endswith("x") and float(ratio[:-1]) > 0
        assert cells[-1] in {"PASS", "FAIL", "info"}
    assert "QUICK RUN" in completed.stdout
    assert "targets:" in completed.stdout


def test_quick_run_reports_the_means_of_the_round_trips_against_their_targets(quick_run) -> None:
    completed, results = quick_run
    lines = completed.stdout.splitlines()
    for key, target in MEAN_TARGETS.items():
        row = results["rows"][key]
        ours, theirs = row["sandboxkit"], row["LocalInterpreter"]
        assert ours["mean_ms"] == pytest.approx(sum(ours["samples_ms"]) / ours["n"])
        assert row["mean"]["ratio"] == pytest.approx(ours["mean_ms"] / theirs["mean_ms"])
        assert row["mean"]["target"] == target
        assert row["mean"]["result"] == ("PASS" if row["mean"]["ratio"] <= float(target[3:-1]) else "FAIL")
        line = [line for line in lines if line.startswith(row["label"] + ", mean  ")]
        assert len(line) == 1, key
        assert line[0].split()[-6:] == [f"{ours['mean_ms']:.3f}", f"{theirs['mean_ms']:.3f}",
                                        f"{row['mean']['ratio']:.3f}x", *target.split(), row["mean"]["result"]]
    verdicts = sum(1 for row in results["rows"].values() if row["result"] in ("PASS", "FAIL")) + len(MEAN_TARGETS)
    assert any(line.startswith("targets: ") and f" of {verdicts} met" in line for line in lines)


def test_quick_run_writes_json_with_every_measurement(quick_run) -> None:
    _, results = quick_run
    assert results["quick"] is True
    assert results["environment"]["dspy"]
    assert results["doc_chars"] == 10_000_000
    assert set(results["rows"]) == set(ROW_KEYS)
    for key, row in results["rows"].items():
        for side in ("sandboxkit", "LocalInterpreter"):
            stats = row[side]
            assert stats["n"] == len(stats["samples_ms"]) >= 1, key
            assert stats["median_ms"] > 0, key
        assert row["result"] in {"PASS", "FAIL", "info"}
        assert row["ratio"] == pytest.approx(row["sandboxkit"]["median_ms"] / row["LocalInterpreter"]["median_ms"])
