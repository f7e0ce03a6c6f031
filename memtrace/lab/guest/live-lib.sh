# memtrace lab guest: memtrace itself inside the guest (lab run --live-snapshot): functions.
#
# Sourced by live.sh, which /init sources after the scenario's last step and the trace stop,
# before the results are written; a scenario may source it too (tests/scenarios/capture_live.sh). /memtrace/live.env (memtrace.lab.pyroot.guest_env) names the interpreter,
# the vmlinux and the serial of the disk holding them (memtrace.lab.pyroot builds it; the
# files sit at their host paths, so the guest chroots into the disk and runs them as is).
# Leaves in /out:
#   live-snapshot.json   stdout of `memtrace snapshot --live --json`
#   live-snapshot.err    its stderr
#   live.snapshot        its -o snapshot file
#   live-nonroot.err     stderr of the same command run as uid/gid 65534
#   live-snapshot.txt    rc=, nonroot_rc=, and /proc/uptime stamps around each run
# A scenario may leave a background job changing the kernel during the walk (e.g.
# tests/scenarios/live_churn.sh): it should stop once /tmp/live-snapshot.done exists and
# hold /tmp/live-background.running while it runs; live.sh creates the first after the
# root run and waits (at most 60 s) for the second to go, so /out is complete when written.
. /memtrace/live.env

mt_live_py() {
	env -i PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/mt-tmp TMPDIR=/mt-tmp TERM=dumb PYTHONUTF8=1 PYTHONDONTWRITEBYTECODE=1 \
		PYTHONPATH="$MT_PYTHONPATH" chroot "$MT_PYROOT" "$MT_PY" "$@"
}

# the same, replacing the calling (sub)shell: `mt_live_py_exec ARGS &` makes $! the
# interpreter itself, so a signal sent to $! reaches it
mt_live_py_exec() {
	exec env -i PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/mt-tmp TMPDIR=/mt-tmp TERM=dumb PYTHONUTF8=1 PYTHONDONTWRITEBYTECODE=1 \
		PYTHONPATH="$MT_PYTHONPATH" chroot "$MT_PYROOT" "$MT_PY" "$@"
}

# mt_live_mount TXT: mount the pyroot disk at $MT_PYROOT with /proc, /sys, cgroup, bpffs,
# tracefs, /dev and /out bound inside; notes device= in TXT. Non-zero (and a console line) if not.
mt_live_mount() {
	_r=$MT_PYROOT
	if ! _dev=$(mt_disk "$MT_PYROOT_SERIAL"); then
		echo "MEMTRACE-ERROR live: no disk with serial $MT_PYROOT_SERIAL" > /dev/console
		return 1
	fi
	mkdir -p "$_r"
	if ! mount -t ext4 -o ro "$_dev" "$_r"; then
		echo "MEMTRACE-ERROR live: cannot mount $_dev" > /dev/console
		return 1
	fi
	mount -o bind /proc "$_r/proc"
	mount -o bind /sys "$_r/sys"
	mount -o bind /sys/fs/cgroup "$_r/sys/fs/cgroup"
	mount -o bind /sys/fs/bpf "$_r/sys/fs/bpf"
	mount -o bind /sys/kernel/tracing "$_r/sys/kernel/tracing"
	mount -o bind /dev "$_r/dev"
	mount -o bind /out "$_r/out"
	mount -t tmpfs tmpfs "$_r/mt-tmp"
	echo "device=$_dev" >> "$1"
}

mt_live_umount() {
	for _m in mt-tmp out dev sys/kernel/tracing sys/fs/bpf sys/fs/cgroup sys proc; do
		umount "$MT_PYROOT/$_m"
	done
	umount "$MT_PYROOT"
}

mt_live_snapshot() {
	_txt=/out/live-snapshot.txt
	: > "$_txt"
	if ! mt_live_mount "$_txt"; then
		echo "rc=setup" >> "$_txt"
		return 1
	fi
	echo "start=$(cut -d' ' -f1 /proc/uptime)" >> "$_txt"
	echo "MEMTRACE-LIVE snapshot --live started" > /dev/console
	mt_live_py -m memtrace snapshot --live --vmlinux "$MT_VMLINUX" -o /out/live.snapshot --json \
		> /out/live-snapshot.json 2> /out/live-snapshot.err
	_rc=$?
	echo "end=$(cut -d' ' -f1 /proc/uptime)" >> "$_txt"
	echo "rc=$_rc" >> "$_txt"
	echo "MEMTRACE-LIVE snapshot --live rc=$_rc" > /dev/console
	: > /tmp/live-snapshot.done
	_n=0
	while [ -e /tmp/live-background.running ] && [ "$_n" -lt 300 ]; do
		sleep 0.2
		_n=$((_n + 1))
	done
	[ ! -e /tmp/live-background.running ] \
		|| echo "MEMTRACE-ERROR live: the background job still runs 60 s after the snapshot" > /dev/console
	# the same command without root: must fail with one line and the documented status
	mt_live_py -c 'import os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])' \
		-m memtrace snapshot --live --vmlinux "$MT_VMLINUX" > /out/live-nonroot.out 2> /out/live-nonroot.err
	echo "nonroot_rc=$?" >> "$_txt"
	echo "nonroot_end=$(cut -d' ' -f1 /proc/uptime)" >> "$_txt"
	mt_live_umount
	return 0
}

