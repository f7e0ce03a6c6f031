# capture_live: `memtrace capture` itself in the guest (run with --live-snapshot), around a
# map being created and filled, then stopped with SIGTERM as a user's Ctrl-C would.
#
# The capture installs memtrace's kprobes generated from the guest kernel's own BTF, records
# in a tracefs instance of its own, and must leave kprobe_events and instances/ as it found
# them. What it saw, and the tracefs state during and after, land in /out/files for the
# host (tests/test_capture_live_lab.py). Needs: lab run --live-snapshot.
. /memtrace/live-lib.sh
B=$BPFFS
F=/out/files
T=/sys/kernel/tracing
mkdir -p $F
cg_create pod
cg_create pod/p1
cat $T/kprobe_events > $F/kprobe_events.before
ls $T/instances > $F/instances.before
mt_live_mount $F/mount.txt
step start
mt_live_py_exec -m memtrace capture -o /out/files/capture.txt --json > $F/capture.json 2> $F/capture.err &
cap=$!
wait_started $cap 120 grep -q "capture: recording" $F/capture.err || { cat $F/capture.err; exit 1; }
cat $T/kprobe_events > $F/kprobe_events.during
ls $T/instances > $F/instances.during
create_map pod/p1 hash $B/h key=8 value=100 entries=1031 flags=1 name=h > /dev/null
in_cg pod/p1 mapctl fill $B/h 700 > /dev/null
create_map pod/p1 array $B/a key=4 value=64 entries=509 name=a > /dev/null
step filled
kill -TERM $cap
rc=0
wait $cap || rc=$?
echo "rc=$rc" > $F/capture.rc
cat $T/kprobe_events > $F/kprobe_events.after
ls $T/instances > $F/instances.after
mt_live_umount
note "capture_live: memtrace capture exited $rc"
