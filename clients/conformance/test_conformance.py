"""The conformance suite: every scenario of scenarios.json against every SDK's driver.

    .venv/bin/python -m pytest clients/conformance          # all SDKs
    CONFORMANCE_SDKS=rust,python .venv/bin/python -m pytest clients/conformance

Results go to target/test-output/conformance/results.json; the last test checks that the
feature matrix committed in docs/clients.md is the one these results give (matrix.py writes it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix import RESULTS, check_docs  # noqa: E402
from runner import Run, load_drivers, load_scenarios  # noqa: E402

DRIVERS = load_drivers()
SDKS = [s for s in os.environ.get("CONFORMANCE_SDKS", ",".join(DRIVERS)).split(",") if s]
SCENARIOS = load_scenarios()
results: dict[str, dict[str, str]] = {}
measured: dict[str, dict[str, dict]] = {}


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_scenario(sdk: str, scenario: dict) -> None:
    outcome = results.setdefault(sdk, {})
    outcome[scenario["id"]] = "fail"
    measured.setdefault(sdk, {})[scenario["id"]] = Run(scenario, sdk, DRIVERS[sdk]["command"]).execute()
    outcome[scenario["id"]] = "pass"


def test_feature_matrix_matches_the_run() -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (RESULTS.parent / "measured.json").write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    if set(SDKS) != set(DRIVERS):
        pytest.skip("the matrix is checked on a run of every SDK")
    problem = check_docs(results)
    assert problem is None, problem
