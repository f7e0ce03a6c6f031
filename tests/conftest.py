"""Shared fixtures. `lab` runs real lab scenarios on real kernels, once per test session.

Set MEMTRACE_LAB_RUNS=DIR to reuse runs already made there as DIR/<scenario>-<kernel>/
(handy while developing; CI always makes fresh ones).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

KERNELS = ("6.1", "6.12")


class LabRuns:
    """Lab runs made on demand and shared by every test of the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.reuse = Path(os.environ["MEMTRACE_LAB_RUNS"]) if os.environ.get("MEMTRACE_LAB_RUNS") else None
        self._done: dict[tuple[str, str], Path] = {}

    def get(self, scenario: str, kernel: str, *, vmcore: bool = True) -> Path:
        """Output folder of `scenario` run on `kernel` (with a vmcore unless vmcore=False)."""
        key = (scenario, kernel)
        if key in self._done and (not vmcore or (self._done[key] / "vmcore").exists()):
            return self._done[key]
        if self.reuse:
            cand = self.reuse / f"{scenario}-{kernel}"
            if (cand / "meta.json").exists() and (not vmcore or (cand / "vmcore").exists()):
                self._done[key] = cand
                return cand
        from memtrace.lab.run import run

        out = self.root / f"{scenario}-{kernel}"
        run(scenario, kernel, out, vmcore=vmcore, force=True)
        self._done[key] = out
        return out

    def truth(self, scenario: str, kernel: str) -> dict:
        return json.loads((self.get(scenario, kernel) / "truth.json").read_text())


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> LabRuns:
    return LabRuns(tmp_path_factory.mktemp("lab"))


@pytest.fixture(params=KERNELS)
def kernel(request) -> str:
    return request.param
