# live-race: three pinned maps, then a job that frees one on the host's word (for a certain race)
#
# For tests/test_snapshot_live_churn.py: the host walks the guest live over QMP and, once
# the walk has listed the maps but before it reads race_b, writes "free race_b" to the
# guest's second serial port (ttyS1). The job unpins race_b (nothing else holds it, so it
# leaves map_idr), waits until bpftool no longer lists it, and prints MEMTRACE-FREED race_b.
# It outlives the scenario: the host runs this with keep_running.
B=$BPFFS
cg_create race
step start
create_map race hash $B/race_a key=8 value=64 entries=1031 name=race_a > /dev/null
create_map race hash $B/race_b key=8 value=64 entries=1031 name=race_b > /dev/null
in_cg race mapctl fill $B/race_b 500 > /dev/null
create_map race array $B/race_c key=4 value=64 entries=509 name=race_c > /dev/null
step made
(
	exec 3< /dev/ttyS1
	stty -F /dev/ttyS1 -echo 2> /dev/null || true
	echo "MEMTRACE-RACE-READY" > /dev/console
	while read -r cmd name <&3; do
		[ "$cmd" = free ] || continue
		rm "$B/$name"
		n=0
		while bpftool map show name "$name" > /dev/null 2>&1 && [ "$n" -lt 100 ]; do
			sleep 0.1
			n=$((n + 1))
		done
		echo "MEMTRACE-FREED $name" > /dev/console
	done
) > /dev/null 2>&1 &
