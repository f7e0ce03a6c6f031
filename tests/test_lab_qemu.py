"""memtrace.lab.qemu without a guest: what a panic report shows from a serial log."""

from __future__ import annotations

from memtrace.lab.qemu import Guest

# Lines of the CI failure's 6.12 serial log (QEMU multi-threaded TCG), order kept: CPU 1
# oopsed at an int3 left by text patching, CPU 0 hit the same int3 while CPU 1 was dying.
LOG = """\
[    1.401000] clocksource: Switched to clocksource tsc
[    1.488497] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[    1.488554] RIP: 0010:sched_clock_cpu+0x9/0x190
[    1.488601] R10: ffff8973014ed4b0 R11: 000000004033c37f R12: ffff89731f100001
[    1.488611] FS:  0000000000000000(0000) GS:ffff89731f000000(0000) knlGS:0000000000000000
[    1.573569] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI
[    1.573625] RIP: 0010:sched_clock_cpu+0x9/0x190
[    1.573683] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
[    1.573821] Kernel panic - not syncing: Fatal exception in interrupt
[    3.156645] Shutting down cpus with NMI
"""


def _guest(tmp_path, log: str) -> Guest:
    g = Guest(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", rundir=tmp_path, out_disk=tmp_path / "out.img")
    g.serial_log.write_text(log)
    return g


def test_panic_tail_starts_at_the_first_cpus_oops(tmp_path):
    shown = _guest(tmp_path, LOG).panic_tail().splitlines()
    assert shown[0] == "serial log from the panic:"
    assert "[#1]" in shown[1] and "clocksource" not in "\n".join(shown)
    assert "Kernel panic - not syncing" in shown[-2] and "Shutting down" in shown[-1]


def test_panic_tail_of_a_single_oops(tmp_path):
    one = "\n".join(l for l in LOG.splitlines() if not l.startswith("[    1.4")) + "\n"
    shown = _guest(tmp_path, one).panic_tail().splitlines()
    assert "[#2]" in shown[1] and "sched_clock_cpu" in shown[2]
