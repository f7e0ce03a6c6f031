"""`memtrace lab run --recorder`: a recorder that does not exist is a usage error (exit 2,
one line, nothing written, no guest started)."""

from __future__ import annotations

import subprocess
import sys


def test_unknown_recorder(tmp_path):
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "memtrace", "lab", "run", "force", "--recorder", "perf", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    errors = [l for l in p.stderr.splitlines() if l.startswith("memtrace: error: ")]
    assert errors == ["memtrace: error: unknown recorder 'perf': choose one of tracefs, trace-cmd"], p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
