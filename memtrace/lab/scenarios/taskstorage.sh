# taskstorage: task, cgroup and inode storage maps made in pod/owner; a task in pod/user gives tasks, cgroups and inodes elements
#
# BPF_MAP_TYPE_TASK_STORAGE (key: a pidfd), BPF_MAP_TYPE_CGRP_STORAGE (6.2+; key: an fd of a
# cgroup2 directory) and BPF_MAP_TYPE_INODE_STORAGE (BPF LSM; key: an fd of a file) are
# local-storage maps user space can fill without a BPF program (mapctl loads the BTF they
# need). On 6.12 task and cgroup storage set smap->bpf_ma: each element and each owner's
# bpf_local_storage comes from the map's selem_ma / storage_ma bpf_mem_alloc, whose per-CPU
# free lists hold charged objects not in use (prefilled at map creation, refilled by
# irq_work), all charged to the creator's memcg (pod/owner). Inode storage does not
# (inode_storage_map_alloc passes bpf_ma = false): it allocates both with bpf_map_kzalloc
# (GFP_ATOMIC), charged to the map's memcg, as sk storage does and as 6.1 does for every
# local-storage type. 6.1 has no cgroup storage; a kernel without the BPF LSM has no inode
# storage: the scenario notes the kernel's refusal and goes on without the map.
# Mapctls in pod/user then, one after the other, fork TS_TASKS children that pause() and give
# each an element, make TS_CGROUPS cgroups pod/user/c<i> and give each an element, and
# create TS_FILES empty files f<i> on a tmpfs of their own and give each file's inode an
# element; all hold them to the end, for the vmcore. (Empty files: a file's page cache would
# be charged to pod/user, its creator, and is not the map's; so are its inode and dentry.)
B=$BPFFS
TS_TASKS=${TS_TASKS:-300}
TS_CGROUPS=${TS_CGROUPS:-100}
TS_FILES=${TS_FILES:-211}
TS_DIR=/mnt/inodes
mkdir -p $TS_DIR
mount -t tmpfs tmpfs $TS_DIR
cg_create pod
cg_create pod/owner
cg_create pod/user

# ts_create TYPE WHY: create the local-storage map TYPE in pod/owner, pinned as $B/TYPE, and
# print 1; if the kernel lacks the type (mapctl's message says WHY), note it and print 0; any
# other failure fails the scenario. (The answer comes through a pipe: a file written by
# mapctl in pod/owner would charge owner a page-cache page.)
ts_create() {
	if _out=$(in_cg pod/owner mapctl create "$1" "$B/$1" key=4 value=60 entries=0 flags=1 name="$1" 2>&1); then
		map_created "$_out" "$1" "$B/$1" pod/owner
		echo 1
	else
		case "$_out" in *"$2"*) ;; *) echo "$_out" >&2 && return 1 ;; esac
		note "$1: unsupported: $_out"
		echo 0
	fi
}

# ts_fill TYPE ARG...: mapctl TYPE-fill (with - for _) $B/TYPE ARG... READYFILE in pod/user,
# in the background holding what it made; note its answer, then the step TYPE-filled
ts_fill() {
	_t=$1
	shift
	_cmd=$(echo "$_t" | tr _ -)-fill
	(echo 0 > "$CG/pod/user/cgroup.procs" && exec mapctl "$_cmd" "$B/$_t" "$@" "/tmp/$_t.ready") > "/out/$_t.txt" &
	wait_file "/tmp/$_t.ready"
	note "$_cmd: $(cat "/out/$_t.txt")"
	step "$_t-filled"
}

step start
create_map pod/owner task_storage $B/task_storage key=4 value=60 entries=0 flags=1 name=task_storage > /dev/null
ts_cgrp=$(ts_create cgrp_storage "no BPF_MAP_TYPE_CGRP_STORAGE")
ts_inode=$(ts_create inode_storage "no BPF LSM")
# the mapctl processes that made the maps in owner were charged there for their own kernel
# objects too, freed through RCU after they exit: settle until owner's memory.current holds
# still over 6 s (longer than kfree_rcu's 5 s batch), so that those frees do not land in the
# fill step
_prev=-1
_n=0
while [ "$(cg_read pod/owner memory.current)" != "$_prev" ] && [ $_n -lt 10 ]; do
	_prev=$(cg_read pod/owner memory.current)
	sleep 6
	mt_settle
	_n=$((_n + 1))
done
note "owner settled after $_n settles at $_prev B"
step create
ts_fill task_storage "$TS_TASKS"
if [ "$ts_cgrp" = 1 ]; then
	ts_fill cgrp_storage "$CG/pod/user" "$TS_CGROUPS"
fi
if [ "$ts_inode" = 1 ]; then
	ts_fill inode_storage "$TS_DIR" "$TS_FILES"
fi
