"""Test and bench helpers, not used by memtrace's commands.

Oracles and encoders the test suite (tests/) and the benchmarks (bench/) hold memtrace's
production readers to; nothing under ``memtrace.cli`` or its layers imports this package, and
the wheel leaves it out (pyproject.toml, ``[tool.setuptools.packages.find] exclude``): it
exists in a checkout only.

* :mod:`memtrace.testing.ftrace_reference`: the pure-Python reference parser for ftrace text,
  the oracle for the C scanner (``memtrace.sources.trace.ftrace_text``).
* :mod:`memtrace.testing.perfetto`: ``parse_perfetto_reference`` (every packet through the
  protobuf-object reader, the oracle for the numpy wire decoder) and ``events_to_trace`` (an
  event table encoded as a perfetto trace, to feed real lab events to the perfetto reader).
"""
