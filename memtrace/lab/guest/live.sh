# memtrace lab guest: `memtrace snapshot --live` inside the guest (lab run --live-snapshot).
#
# Sourced by /init after the scenario's last step and the trace stop; the functions are in
# live-lib.sh, which a scenario may source itself to run memtrace in the guest while it runs
# (mt_live_mount, mt_live_py, mt_live_umount; e.g. tests/scenarios/capture_live.sh).
. /memtrace/live-lib.sh
mt_live_snapshot
