"""`scripts/bench.py --quick` runs end to end in CI, so the benchmark cannot rot.

No threshold is asserted (a shared CI machine gives noisy numbers); the report is printed to the
test's output, and every set-up must be there: measured, or skipped with the reason ("not built
yet" for a taskd flag that does not exist, "not installed" for a peer missing the bench extra).
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

SETUPS = (
    "seed", "taskd", "taskd-warning", "taskd-prefetch", "taskd-c10", "taskd-async100",
    "celery-solo", "dramatiq", "rq",
)  # fmt: skip


def test_quick_bench_measures_or_explains_every_setup() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=150, cwd=str(ROOT), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    print(json.dumps(result, indent=1))  # the numbers, in the CI log (pytest -rA / on failure)
    noop = result["runs_tasks_per_s"]["noop"]
    for name in SETUPS:
        if name in result["skipped"]:
            why = result["skipped"][name]
            assert why.startswith(("not built yet", "not installed")), (name, why)
        else:
            assert noop[name] and all(rate > 0 for rate in noop[name]), (name, noop)
    assert {"seed", "taskd"} <= set(result["latency_at_200_per_s"])
    assert result["idle"]["taskd"]["idle_rss_mib"] > 0
    assert {g["goal"] for g in result["goals"]}  # every goal listed, met or not
