# memtrace lab guest library, sourced by /init; scenario scripts can use every function here.
#
#   step NAME                    settle, then record ground truth for every cgroup and map
#   cg_create PATH [MAX]         create a cgroup (and parents) with the memory controller
#   cg_remove PATH               rmdir a cgroup
#   cg_set PATH FILE VALUE       write a cgroup file
#   cg_read PATH FILE            print a cgroup file
#   in_cg PATH CMD...            run CMD inside cgroup PATH (a fresh process; waits for it)
#   create_map CG TYPE PIN ATTR...   mapctl create inside CG, noted in /out/maps-created.txt
#   map_created ID TYPE PIN CG   note a map made another way (e.g. mapctl clone)
#   mapctl ...                   the guest's BPF map tool (see mapctl.c)
#   note KEY VALUE...            a fact for the host, in /out/notes.txt
#   wait_file PATH [SECONDS]     wait until PATH exists (default 120 s), else fail
#   wait_started PID SECONDS CMD...  wait until CMD succeeds while process PID lives (a
#                                background job getting ready), else fail naming which
#   mt_catches_int PID           does PID catch SIGINT yet (a background job starts ignoring it)
#   mt_wait_exit PID SECONDS     wait until PID exits; fails if it still runs then
#   mt_settle_until MAX CMD...   settle until CMD succeeds (at most MAX times; MT_SETTLES)
#   mt_current_at_most CG BYTES  is CG's memory.current at most BYTES
#
# Paths of cgroups are relative to /sys/fs/cgroup. BPF pins live under /sys/fs/bpf.
CG=/sys/fs/cgroup
BPFFS=/sys/fs/bpf
TRACEFS=/sys/kernel/tracing
# the tracefs instance `trace-cmd record` writes trace.dat from (memtrace.lab.initramfs)
MT_TC_INSTANCE=memtrace-tc
MT_NCPU=$(grep -c '^processor' /proc/cpuinfo)
MT_STEP=0

mt_init_out() {
	mkdir -p /out/steps
	: > /out/notes.txt
	: > /out/maps-created.txt
}

note() {
	echo "$*" >> /out/notes.txt
}

wait_file() {
	_n=0
	while [ ! -e "$1" ]; do
		[ "$_n" -lt "$((${2:-120} * 5))" ] || { echo "wait_file: $1 did not appear" >&2; return 1; }
		sleep 0.2
		_n=$((_n + 1))
	done
}

# mt_catches_int PID: does PID catch SIGINT (bit 1 of SigCgt in /proc/PID/status)? A
# background job of a non-interactive sh starts with SIGINT ignored until it sets a handler.
mt_catches_int() {
	_m=$(sed -n 's/^SigCgt:[[:space:]]*//p' /proc/$1/status 2> /dev/null)
	[ -n "$_m" ] && [ $((0x${_m#${_m%?}} & 2)) -ne 0 ]
}

# mt_wait_exit PID SECONDS: wait until PID is gone (or a zombie); 1 if it still runs then
mt_wait_exit() {
	_n=$(($2 * 10))
	while kill -0 "$1" 2> /dev/null; do
		[ "$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' /proc/$1/status 2> /dev/null)" = Z ] && return 0
		[ "$_n" -gt 0 ] || return 1
		sleep 0.1
		_n=$((_n - 1))
	done
}

wait_started() {
	_pid=$1
	_n=$(($2 * 10))
	shift 2
	until "$@"; do
		kill -0 "$_pid" 2> /dev/null || { echo "wait_started: process $_pid ended before: $*" >&2; return 1; }
		[ "$_n" -gt 0 ] || { echo "wait_started: not within the time: $*" >&2; return 1; }
		sleep 0.1
		_n=$((_n - 1))
	done
}

cg_create() {
	_path=""
	for _part in $(echo "$1" | tr / ' '); do
		if [ -n "$_path" ]; then
			grep -q memory "$CG/$_path/cgroup.subtree_control" || echo +memory > "$CG/$_path/cgroup.subtree_control"
			_path="$_path/$_part"
		else
			_path="$_part"
		fi
		[ -d "$CG/$_path" ] || mkdir "$CG/$_path"
	done
	if [ -n "$2" ]; then
		echo "$2" > "$CG/$1/memory.max"
	fi
}

cg_remove() {
	rmdir "$CG/$1"
}

cg_set() {
	echo "$3" > "$CG/$1/$2"
}

cg_read() {
	cat "$CG/$1/$2"
}

in_cg() {
	_cg="$1"
	shift
	(echo 0 > "$CG/$_cg/cgroup.procs" && exec "$@")
}

create_map() {
	_cg="$1"
	_type="$2"
	_pin="$3"
	shift 3
	_id=$(in_cg "$_cg" mapctl create "$_type" "$_pin" "$@")
	map_created "$_id" "$_type" "$_pin" "$_cg"
	echo "$_id"
}

# map_created ID TYPE PIN CG: note a map made by other means than create_map (e.g. clone)
map_created() {
	echo "$1 $2 $3 /$4 step=$((MT_STEP + 1))" >> /out/maps-created.txt
}

# Let exited tasks' RCU-deferred frees finish, then run one short task per CPU in a
# cgroup of its own: its charges switch each CPU's page and object stock away from
# whatever memcg was cached there, so memory.current holds no pre-charged stock.
mt_settle() {
	sleep 0.3
	[ -d "$CG/memtrace-settle" ] || mkdir "$CG/memtrace-settle"
	_cpu=0
	while [ "$_cpu" -lt "$MT_NCPU" ]; do
		(echo 0 > "$CG/memtrace-settle/cgroup.procs" && exec taskset -c "$_cpu" sh -c 'echo x > /dev/null')
		_cpu=$((_cpu + 1))
	done
}

# mt_settle_until MAX CMD...: settle until CMD succeeds, at most MAX times: the wait for
# RCU-deferred frees (kfree_rcu batches up to 5 s) after a scenario freed many objects, so
# none lands between the next step's marker and its reading. MT_SETTLES: how many it took.
mt_settle_until() {
	_max=$1
	shift
	MT_SETTLES=0
	while ! "$@"; do
		# giving up is said, never silent: a note in truth.json and a console warning
		if [ "$MT_SETTLES" -ge "$_max" ]; then
			note "mt_settle_until gave up after $_max settles: $*"
			echo "MEMTRACE-WARNING mt_settle_until gave up after $_max settles: $*" > /dev/console
			return 0
		fi
		mt_settle
		MT_SETTLES=$((MT_SETTLES + 1))
	done
}

# mt_holds_still CG SECONDS: does CG's memory.current stay the same over SECONDS, with a
# settle before the second reading? (Longer than kfree_rcu's 5 s batch: no free is pending.)
mt_holds_still() {
	_still=$(cg_read "$1" memory.current)
	sleep "$2"
	mt_settle
	[ "$(cg_read "$1" memory.current)" = "$_still" ]
}

# mt_current_at_most CG BYTES: is CG's memory.current at most BYTES?
mt_current_at_most() {
	[ "$(cg_read "$1" memory.current)" -le "$2" ]
}

mt_record() {
	_d="$1"
	(
		cd "$CG" || exit 1
		find . -type d | while read -r _c; do
			_o="$_d/cgroups/$_c"
			mkdir -p "$_o"
			stat -c %i "$_c" > "$_o/id"
			for _f in cgroup.events cgroup.stat memory.current memory.max memory.high memory.peak \
				memory.events memory.events.local memory.stat; do
				[ -f "$_c/$_f" ] && cat "$_c/$_f" > "$_o/$_f"
			done
		done
	)
	bpftool -j -f map show > "$_d/maps.json" 2> "$_d/bpftool.err"
	mapctl fdinfo > "$_d/fdinfo.txt" 2>> "$_d/bpftool.err"
	ls -1 "$BPFFS" > "$_d/pins.txt"
}

step() {
	mt_settle
	MT_STEP=$((MT_STEP + 1))
	_n=$(printf %03d "$MT_STEP")
	_d="/out/steps/$_n-$1"
	mkdir -p "$_d"
	echo "memtrace_step $_n $1" > "$TRACEFS/trace_marker"
	_tcm="$TRACEFS/instances/$MT_TC_INSTANCE/trace_marker"
	[ ! -e "$_tcm" ] || echo "memtrace_step $_n $1" > "$_tcm" || true
	# and into any other tracefs instance a scenario records in (memtrace capture, a script's
	# trace-cmd), so its capture can be cut at the steps too
	for _m in "$TRACEFS"/instances/*/trace_marker; do
		[ "$_m" = "$_tcm" ] || [ ! -e "$_m" ] || echo "memtrace_step $_n $1" > "$_m" 2> /dev/null || true
	done
	cat /proc/uptime > "$_d/uptime"
	mt_record "$_d"
	echo "MEMTRACE-STEP $_n $1" > /dev/console
}

# vmcore_at NAME: the host writes the guest's memory, as it is here, to vmcore-NAME in the
# run's output folder (not with --no-vmcore). The guest asks on the console and waits on its
# second serial port (ttyS1, opened first so the answer cannot come before the read) until
# the host has dumped; dump-guest-memory keeps the guest paused while it writes.
vmcore_at() {
	exec 3< /dev/ttyS1
	stty -F /dev/ttyS1 -echo 2> /dev/null || true
	echo "MEMTRACE-VMCORE $1" > /dev/console
	read -r _ack <&3
	exec 3<&-
	case "$_ack" in
	"vmcore-done $1" | "vmcore-skipped $1") note "vmcore_at $1: ${_ack%% *}" ;;
	*) echo "vmcore_at $1: the host answered '$_ack'" >&2; return 1 ;;
	esac
}

mt_trace_start() {
	echo 0 > "$TRACEFS/tracing_on"
	grep -qw boot "$TRACEFS/trace_clock" && echo boot > "$TRACEFS/trace_clock"
	echo "${MT_TRACE_BUFFER_KB:-32768}" > "$TRACEFS/buffer_size_kb"
	: > /out/probe-errors.txt
	if [ -s /memtrace/kprobe_events ]; then
		while read -r _line; do
			case "$_line" in '' | '#'*) continue ;; esac
			if echo "$_line" >> "$TRACEFS/kprobe_events" 2> /dev/null; then
				_ev=$(echo "$_line" | sed 's/^[pr][0-9]*:\([^ ]*\) .*/\1/')
				case "$_ev" in */*) ;; *) _ev="kprobes/$_ev" ;; esac
				echo 1 > "$TRACEFS/events/$_ev/enable" || echo "enable-failed $_line" >> /out/probe-errors.txt
			else
				echo "install-failed $_line" >> /out/probe-errors.txt
			fi
		done < /memtrace/kprobe_events
		cp "$TRACEFS/error_log" /out/probe-error_log.txt 2> /dev/null
	fi
	: > /out/events-enabled.txt
	while read -r _e; do
		if [ -e "$TRACEFS/events/$_e/enable" ]; then
			echo 1 > "$TRACEFS/events/$_e/enable" && echo "$_e" >> /out/events-enabled.txt
		fi
	done < /memtrace/events.list
	echo 1 > "$TRACEFS/tracing_on"
}

mt_trace_stop() {
	echo 0 > "$TRACEFS/tracing_on"
	# each kprobe's hits and misses (a kretprobe with all maxactive instances in use, or a
	# kprobe hit inside another probe's handler, records no event and only counts a miss)
	cat "$TRACEFS/kprobe_profile" > /out/kprobe_profile.txt 2> /dev/null
	cp "$TRACEFS/trace" /out/trace.txt
	mkdir -p /out/trace-stats
	_cpu=0
	while [ "$_cpu" -lt "$MT_NCPU" ]; do
		cat "$TRACEFS/per_cpu/cpu$_cpu/stats" > "/out/trace-stats/cpu$_cpu"
		_cpu=$((_cpu + 1))
	done
	cat "$TRACEFS/kprobe_events" > /out/kprobe_events.installed 2> /dev/null
}

# trace-cmd recorder (lab run --recorder trace-cmd): `trace-cmd record` in a tracefs instance
# of its own, beside the top-level buffer that becomes trace.txt, of the events listed in
# /memtrace/trace-cmd.events (by default those `memtrace probes --format trace-cmd` lists:
# the probes/*.toml tracepoints and the run's kprobe events) that exist here. Same clock
# (boot). Step markers go to both buffers (step). Writes /out/trace.dat, trace-cmd.log,
# trace-cmd.cmd.
mt_tracecmd_start() {
	[ -x /usr/bin/trace-cmd ] && [ -f /memtrace/trace-cmd.events ] || return 0
	_args=""
	while read -r _e; do
		case "$_e" in '' | '#'*) continue ;; esac
		[ -d "$TRACEFS/events/${_e%%:*}/${_e#*:}" ] && _args="$_args -e $_e"
	done < /memtrace/trace-cmd.events
	[ -n "$_args" ] || { echo "MEMTRACE-ERROR trace-cmd: none of the events to record exist" > /dev/console; return 0; }
	echo "trace-cmd record -B $MT_TC_INSTANCE -C boot -b ${MT_TC_BUFFER_KB:-16384} -o /out/trace.dat$_args" > /out/trace-cmd.cmd
	(cd /tmp && exec trace-cmd record -B "$MT_TC_INSTANCE" -C boot -b "${MT_TC_BUFFER_KB:-16384}" \
		-o /out/trace.dat $_args) > /out/trace-cmd.log 2>&1 &
	MT_TC_PID=$!
	# Recording once the instance is on with a per-CPU file for every CPU (trace-cmd turns
	# the new instance off, sets it up, starts one reader per CPU, then turns it on; its
	# "Hit Ctrl^C" line is stdio-buffered, so the log shows nothing until it exits) and
	# trace-cmd catches SIGINT: as a background job it starts with SIGINT ignored, and it
	# installs its handler (before forking the readers, trace-cmd 3.1) only after set-up.
	_n=0
	while :; do
		_files=$(ls /out/trace.dat.$MT_TC_INSTANCE.cpu* 2> /dev/null | wc -l)
		[ "$(cat "$TRACEFS/instances/$MT_TC_INSTANCE/tracing_on" 2> /dev/null)" = 1 ] && [ "$_files" -ge "$MT_NCPU" ] \
			&& mt_catches_int "$MT_TC_PID" && break
		if [ "$_n" -ge 600 ] || ! kill -0 "$MT_TC_PID" 2> /dev/null; then
			# SIGINT may still be ignored: kill it, and remove the instance it may have made
			echo "MEMTRACE-ERROR trace-cmd record did not start" > /dev/console
			kill -KILL "$MT_TC_PID" 2> /dev/null
			wait "$MT_TC_PID"
			echo "$?" > /out/trace-cmd.rc
			rmdir "$TRACEFS/instances/$MT_TC_INSTANCE" 2> /dev/null
			MT_TC_PID=""
			return 0
		fi
		sleep 0.1
		_n=$((_n + 1))
	done
	echo "trace-cmd recording after $((_n / 10)).$((_n % 10)) s" >> /out/trace-cmd.started
}

# SIGINT: trace-cmd stops its readers, merges the per-CPU files into trace.dat, prints
# per-CPU statistics and removes its instance (it leaves the top-level buffer alone).
# Bounded: a trace-cmd still running 300 s after SIGINT is reported and killed.
mt_tracecmd_stop() {
	[ -n "$MT_TC_PID" ] || return 0
	kill -INT "$MT_TC_PID"
	mt_wait_exit "$MT_TC_PID" 300 || {
		echo "MEMTRACE-ERROR trace-cmd still recording 300 s after SIGINT: $(grep '^Sig[IC]' /proc/$MT_TC_PID/status | tr '\n\t' '  ')" > /dev/console
		kill -KILL "$MT_TC_PID"
	}
	wait "$MT_TC_PID"
	echo "$?" > /out/trace-cmd.rc
	MT_TC_PID=""
}

# Write /out onto the output disk as a tar (the host reads it after the run).
mt_finish() {
	echo "$1" > /out/rc
	tar -c -f "$(mt_disk memtrace-out || echo /dev/vda)" -C /out . && sync
}

# mt_disk SERIAL: the /dev node of the virtio disk QEMU gave serial SERIAL (fails if none)
mt_disk() {
	for _s in /sys/block/*/serial; do
		if [ "$(cat "$_s" 2> /dev/null)" = "$1" ]; then
			_b=${_s%/serial}
			echo "/dev/${_b##*/}"
			return 0
		fi
	done
	return 1
}

# The maps of the restart and ghost scenarios, each created in its own step inside CG and
# then filled in another, pinned under $BPFFS by kind:
#   hash_prealloc    hash, key 8, value 100, 4099 entries, 3001 filled
#   hash_noprealloc  hash BPF_F_NO_PREALLOC, key 8, value 100, 5003 entries, 1201 filled
#   percpu_hash      percpu hash, key 4, value 1020, 1031 entries, 500 filled
#   lru_hash         LRU hash, key 4, value 200, 2053 entries, 1000 filled
#   array            array, value 76, 3001 entries, 3001 filled
#   percpu_array     percpu array, value 1020, 509 entries, 509 filled
#   ringbuf          ringbuf, 256 KiB
#   lpm_trie         LPM trie (no-prealloc), key 4+4, value 16, 2003 entries, 997 filled
#   hash_of_maps     hash of maps, 67 entries, 5 inner arrays (value 52, 211 entries) set
standard_maps() {
	_cg="$1"
	mt_map "$_cg" hash hash_prealloc 3001 key=8 value=100 entries=4099
	mt_map "$_cg" hash hash_noprealloc 1201 key=8 value=100 entries=5003 flags=1
	mt_map "$_cg" percpu_hash percpu_hash 500 key=4 value=1020 entries=1031
	mt_map "$_cg" lru_hash lru_hash 1000 key=4 value=200 entries=2053
	mt_map "$_cg" array array 3001 key=4 value=76 entries=3001
	mt_map "$_cg" percpu_array percpu_array 509 key=4 value=1020 entries=509
	mt_map "$_cg" ringbuf ringbuf 0 key=0 value=0 entries=262144
	mt_map "$_cg" lpm_trie lpm_trie 997 key=8 value=16 entries=2003 flags=1
	create_map "$_cg" array "$BPFFS/inner_tmpl" key=4 value=52 entries=211 name=inner_tmpl > /dev/null
	mt_map "$_cg" hash_of_maps hash_of_maps 0 key=4 value=4 entries=67 inner="$BPFFS/inner_tmpl"
	rm "$BPFFS/inner_tmpl"
	_i=0
	while [ "$_i" -lt 5 ]; do
		create_map "$_cg" array "$BPFFS/inner$_i" key=4 value=52 entries=211 name=inner$_i > /dev/null
		in_cg "$_cg" mapctl fill "$BPFFS/inner$_i" 211 > /dev/null
		in_cg "$_cg" mapctl outer-set "$BPFFS/hash_of_maps" "$_i" "$BPFFS/inner$_i" > /dev/null
		rm "$BPFFS/inner$_i"
		_i=$((_i + 1))
	done
	step fill-hash_of_maps
}

# mt_map CG TYPE NAME FILL ATTR...: create map NAME (pinned at $BPFFS/NAME) in CG, step
# create-NAME, then fill FILL keys from CG and step fill-NAME (no fill step when FILL is 0).
mt_map() {
	_mcg="$1"
	_mtype="$2"
	_mname="$3"
	_mfill="$4"
	shift 4
	create_map "$_mcg" "$_mtype" "$BPFFS/$_mname" name="$_mname" "$@" > /dev/null
	step "create-$_mname"
	if [ "$_mfill" -gt 0 ]; then
		in_cg "$_mcg" mapctl fill "$BPFFS/$_mname" "$_mfill" > /dev/null
		step "fill-$_mname"
	fi
}
