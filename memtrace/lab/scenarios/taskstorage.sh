# taskstorage: task and cgroup storage maps made in pod/owner; a task in pod/user gives tasks and cgroups elements
#
# BPF_MAP_TYPE_TASK_STORAGE (key: a pidfd) and BPF_MAP_TYPE_CGRP_STORAGE (6.2+; key: an fd
# of a cgroup2 directory) are local-storage maps user space can fill without a BPF program
# (mapctl loads the BTF they need). On 6.12 both set smap->bpf_ma: each element and each
# owner's bpf_local_storage comes from the map's selem_ma / storage_ma bpf_mem_alloc, whose
# per-CPU free lists hold charged objects not in use (prefilled at map creation, refilled
# by irq_work), all charged to the creator's memcg (pod/owner). On 6.1 task storage uses
# bpf_map_kzalloc as sk storage does, and there is no cgroup storage: the scenario notes
# the kernel's refusal and goes on with task storage alone.
# A mapctl in pod/user forks TS_TASKS children that pause() and gives each an element, then
# another makes TS_CGROUPS cgroups pod/user/c<i> and gives each an element; both hold them
# to the end, for the vmcore.
B=$BPFFS
TS_TASKS=${TS_TASKS:-300}
TS_CGROUPS=${TS_CGROUPS:-100}
cg_create pod
cg_create pod/owner
cg_create pod/user
step start
create_map pod/owner task_storage $B/task_storage key=4 value=60 entries=0 flags=1 name=task_storage > /dev/null
# cgrp_storage: created when the kernel has it; any other failure fails the scenario. (The
# answer comes through a pipe: a file written by mapctl in pod/owner would charge owner a
# page-cache page.)
if ts_out=$(in_cg pod/owner mapctl create cgrp_storage $B/cgrp_storage key=4 value=60 entries=0 flags=1 name=cgrp_storage 2>&1); then
	map_created "$ts_out" cgrp_storage $B/cgrp_storage pod/owner
	ts_cgrp=1
else
	case "$ts_out" in *"no BPF_MAP_TYPE_CGRP_STORAGE"*) ;; *) echo "$ts_out" >&2 && exit 1 ;; esac
	note "cgrp_storage: unsupported: $ts_out"
	ts_cgrp=0
fi
# the mapctl processes that made the maps in owner were charged there for their own kernel
# objects too, freed through RCU after they exit: settle until owner's memory.current holds
# still, so that those frees do not land in the fill step
_prev=-1
_n=0
while [ "$(cg_read pod/owner memory.current)" != "$_prev" ] && [ $_n -lt 20 ]; do
	_prev=$(cg_read pod/owner memory.current)
	mt_settle
	_n=$((_n + 1))
done
note "owner settled after $_n settles at $_prev B"
step create
(echo 0 > "$CG/pod/user/cgroup.procs" && exec mapctl task-storage-fill $B/task_storage "$TS_TASKS" /tmp/ts.ready) > /out/ts.txt &
wait_file /tmp/ts.ready
note "task-storage-fill: $(cat /out/ts.txt)"
step task_storage-filled
if [ "$ts_cgrp" = 1 ]; then
	(echo 0 > "$CG/pod/user/cgroup.procs" && exec mapctl cgrp-storage-fill $B/cgrp_storage "$CG/pod/user" "$TS_CGROUPS" /tmp/cs.ready) > /out/cs.txt &
	wait_file /tmp/cs.ready
	note "cgrp-storage-fill: $(cat /out/cs.txt)"
	step cgrp_storage-filled
fi
