# localstorage: an sk_storage map made in pod/owner; a task in pod/user gives sockets elements
#
# BPF_MAP_TYPE_SK_STORAGE is the local-storage map user space can fill without a BPF
# program: BPF_MAP_UPDATE_ELEM with key = a socket's fd gives that socket an element (mapctl
# loads the BTF the map needs). Creating it allocates the map's buckets with
# bpf_map_kvcalloc inside map_alloc, before map->objcg and map->id are set (so: uncharged,
# map id 0). Each socket's first element allocates the element and the socket's
# bpf_local_storage with bpf_map_kzalloc (GFP_ATOMIC), charged to the map's memcg
# (pod/owner), not to pod/user whose task does the update. Closing the sockets frees them.
# A second batch of sockets is still held when the scenario ends, for the vmcore.
B=$BPFFS
cg_create pod
cg_create pod/owner
cg_create pod/user
step start
create_map pod/owner sk_storage $B/sk_storage key=4 value=60 entries=0 flags=1 name=sk_storage > /dev/null
step create-sk_storage
base=$(cg_read pod/owner memory.current)
(echo 0 > "$CG/pod/user/cgroup.procs" && exec mapctl sk-storage-fill $B/sk_storage 997 /tmp/sks1.ready) > /out/sks1.txt &
filler=$!
wait_file /tmp/sks1.ready
note "sk-storage-fill 1: $(cat /out/sks1.txt)"
step sk_storage-filled
kill "$filler"
wait "$filler" || true
# the elements go with their sockets through RCU (socket free, then kfree_rcu), which under
# TCG can take seconds: settle until owner is back within 2 pages of its create-step reading
# (what is still pending then is freed during the next step and would hide in its rise)
mt_settle_until 50 mt_current_at_most pod/owner $((base + 8192))
note "sockets closed: owner at create-step + $(( $(cg_read pod/owner memory.current) - base )) B after $MT_SETTLES settles"
step sockets-closed
(echo 0 > "$CG/pod/user/cgroup.procs" && exec mapctl sk-storage-fill $B/sk_storage 499 /tmp/sks2.ready) > /out/sks2.txt &
wait_file /tmp/sks2.ready
note "sk-storage-fill 2: $(cat /out/sks2.txt)"
step sk_storage-held
