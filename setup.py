"""The one compiled part of memtrace: the ftrace text scanner (memtrace/sources/trace/_ftrace_scan.c).

Everything else is in pyproject.toml; `pip install -e .` (scripts/setup) builds the extension in place.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "memtrace.sources.trace._ftrace_scan",
            sources=["memtrace/sources/trace/_ftrace_scan.c"],
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
        )
    ]
)
