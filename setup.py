"""The one compiled part of memtrace: the ftrace text scanner (memtrace/sources/trace/_ftrace_scan.c).

Everything else is in pyproject.toml; `pip install -e .` (scripts/setup) builds the extension in
place. The build carries the SHA-256 of the source it was built from, so a checkout whose C file
changed after the build is told to rebuild instead of running an old scanner.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SRC = "memtrace/sources/trace/_ftrace_scan.c"
digest = hashlib.sha256((Path(__file__).resolve().parent / SRC).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "memtrace.sources.trace._ftrace_scan",
            sources=[SRC],
            define_macros=[("SCAN_SOURCE_SHA256", f'"{digest}"')],
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
        )
    ]
)
