"""memtrace: BPF map memory versus memory cgroups, on real kernels."""

__version__ = "0.1.0"
