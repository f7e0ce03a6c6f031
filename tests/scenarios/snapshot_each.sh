# snapshot-each: one map per type, each created and filled in a cgroup of its own that holds nothing else
#
# For memtrace snapshot's accuracy tests: at the end every each/<name> cgroup's
# memory.current is what creating, pinning and filling its one map charged, and the
# vmcore holds that state. Sizes are odd on purpose.
B=$BPFFS
cg_create each
step start
# fill_until_done CG PIN COUNT: fill, and while updates failed, wait a second and fill again.
# A retry updates the keys that exist in place (no allocation) and allocates only the
# missing ones. A no-prealloc percpu hash allocates each value with GFP_NOWAIT from the
# per-CPU allocator's atomic reserve, which runs dry on a busy machine until its balance
# work refills it (seen: 237 of 500 on a loaded 6.1). Gives up after 30 tries, noted.
fill_until_done() {
	_try=1
	while :; do
		_r=$(in_cg "$1" mapctl fill "$2" "$3")
		case "$_r" in *" failed=0 "*) break ;; esac
		if [ "$_try" -ge 30 ]; then
			break
		fi
		_try=$((_try + 1))
		sleep 1
	done
	note "fill $2: tries=$_try last: $_r"
}
one() {
	_name=$1
	_type=$2
	_fill=$3
	shift 3
	cg_create "each/$_name"
	create_map "each/$_name" "$_type" "$B/$_name" name="$_name" "$@" > /dev/null
	if [ "$_fill" -gt 0 ]; then
		fill_until_done "each/$_name" "$B/$_name" "$_fill"
	fi
	step "made-$_name"
}
one hash_prealloc hash 3001 key=8 value=100 entries=4099
one hash_noprealloc hash 1201 key=8 value=100 entries=5003 flags=1
one percpu_hash percpu_hash 500 key=4 value=1020 entries=1031
one pcpu_hash_np percpu_hash 500 key=4 value=36 entries=1031 flags=1
one lru_hash lru_hash 1000 key=4 value=200 entries=2053
one lru_pcpu_hash lru_percpu_hash 700 key=4 value=60 entries=1531
one array array 3001 key=4 value=76 entries=3001
one array_mmap array 101 key=4 value=76 entries=3001 flags=1024
one percpu_array percpu_array 509 key=4 value=1020 entries=509
one ringbuf ringbuf 0 key=0 value=0 entries=262144
one lpm_trie lpm_trie 997 key=8 value=16 entries=2003 flags=1
step final
