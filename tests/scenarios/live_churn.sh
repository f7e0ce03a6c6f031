# live-churn: stable maps, then a background job that creates, fills and frees maps (and churns no-prealloc hash elements) while `snapshot --live` walks
#
# For tests/test_snapshot_live_churn.py (run with --live-snapshot). The stable maps are
# made in cgroup stable and never touched again. After the last step a background job
# loops, from cgroup churn, until live.sh says the live walk is over
# (/tmp/live-snapshot.done; see memtrace/lab/guest/live.sh), at most CHURN_MAX_S seconds:
#   * creates a map (hash no-prealloc, a vmalloc-backed array, LPM trie, per-CPU hash in
#     turn), fills it, and unpins the one made two rounds before (every fifth: 25 rounds,
#     which outlasts the walk): that map is freed (no fd holds it), so maps appear in and
#     vanish from map_idr all through the walk;
#   * inserts, then deletes, a window of keys of the pinned no-prealloc hash churn_np
#     (elements allocated and freed through bpf_mem_alloc, bucket chains rewritten).
# Every map it makes and frees is noted ("churn create ID TYPE NAME t=UPTIME", "churn free
# ID NAME t=UPTIME") in truth.json notes; its last is "churn stopped rounds=N t=UPTIME". It runs
# with /tmp/live-background.running present, which live.sh waits on before /out is written.
B=$BPFFS
CHURN_MAX_S=600
cg_create stable
cg_create churn
step start

create_map stable hash $B/st_hash key=8 value=100 entries=1031 name=st_hash > /dev/null
in_cg stable mapctl fill $B/st_hash 700 > /dev/null
create_map stable hash $B/st_hash_np key=8 value=64 entries=2053 flags=1 name=st_hash_np > /dev/null
in_cg stable mapctl fill $B/st_hash_np 900 > /dev/null
create_map stable array $B/st_array key=4 value=76 entries=3001 name=st_array > /dev/null
create_map stable percpu_array $B/st_pcpu_arr key=4 value=60 entries=127 name=st_pcpu_arr > /dev/null
create_map stable lpm_trie $B/st_lpm key=8 value=16 entries=509 flags=1 name=st_lpm > /dev/null
in_cg stable mapctl fill $B/st_lpm 300 > /dev/null
create_map stable ringbuf $B/st_ringbuf key=0 value=0 entries=65536 name=st_ringbuf > /dev/null
step stable-made

create_map churn hash $B/churn_np key=8 value=100 entries=8191 flags=1 name=churn_np > /dev/null
in_cg churn mapctl fill $B/churn_np 1000 > /dev/null
step churn-ready

# the churn job: its own shell, not -e (a failed mapctl is noted, not fatal), output to
# the scenario log; it outlives this script (reparented to init) and stops on the flag
: > /tmp/live-background.running
(
	set +e
	_end=$(($(cut -d. -f1 /proc/uptime) + CHURN_MAX_S))
	_i=0
	while [ ! -e /tmp/live-snapshot.done ] && [ "$(cut -d. -f1 /proc/uptime)" -lt "$_end" ]; do
		case $((_i % 4)) in
		0) _t=hash _a="key=8 value=100 entries=2053 flags=1" _f=600 ;;
		1) _t=array _a="key=4 value=76 entries=3001" _f=200 ;;
		2) _t=lpm_trie _a="key=8 value=16 entries=1021 flags=1" _f=300 ;;
		3) _t=percpu_hash _a="key=4 value=36 entries=521" _f=200 ;;
		esac
		# shellcheck disable=SC2086
		if _id=$(in_cg churn mapctl create $_t $B/c$_i $_a name=c$_i); then
			note churn create "$_id" "$_t" "c$_i" "t=$(cut -d' ' -f1 /proc/uptime)"
			echo "$_id" > /tmp/churn-id.$_i
			in_cg churn mapctl fill $B/c$_i $_f > /dev/null
		else
			note churn create-failed "$_t" "c$_i"
		fi
		# most maps live two rounds; every fifth lives 25 (longer than the walk)
		for _old in $((_i - 2)) $((_i - 25)); do
			[ "$_old" -ge 0 ] && [ -e $B/c$_old ] || continue
			[ $((_old % 5)) = 0 ] && [ "$_old" = $((_i - 2)) ] && continue
			rm $B/c$_old && note churn free "$(cat /tmp/churn-id.$_old)" "c$_old" "t=$(cut -d' ' -f1 /proc/uptime)"
		done
		_k=$(((_i % 8) * 1000 + 1000))
		in_cg churn mapctl fill $B/churn_np 1500 $_k > /dev/null
		mapctl delete $B/churn_np 1500 $_k > /dev/null
		_i=$((_i + 1))
	done
	note churn stopped "rounds=$_i" "t=$(cut -d' ' -f1 /proc/uptime)"
	rm -f /tmp/live-background.running
) >> /out/scenario.log 2>&1 &
note churn started pid=$!
# let it get going before the live snapshot starts: its first map exists (the test asserts a
# map was made before the snapshot began; a fixed sleep was no promise on a slow machine)
wait_file /tmp/churn-id.0 120
