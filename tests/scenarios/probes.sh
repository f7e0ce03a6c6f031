# probes: exercise every memtrace probe once: map creation and updates in a leaf memcg, a force charge, frees
#
# pod/p1 creates and fills maps of several kinds (bpf_map_area_alloc, bpf_map_kmalloc_node via
# the LPM trie, bpf_map_alloc_percpu via the per-CPU array, bpf_mem_alloc refills for the
# no-prealloc hash), then a sockhash whose memcg is limited at its current usage is filled
# from the root cgroup (GFP_ATOMIC: force charges). Finally the maps are unpinned (freed) and
# the cgroup removed, so uncharge paths run too.
B=$BPFFS
cg_create pod
cg_create pod/p1
step start
create_map pod/p1 hash $B/h key=8 value=100 entries=1031 name=h > /dev/null
create_map pod/p1 hash $B/hn key=8 value=100 entries=2053 flags=1 name=hn > /dev/null
create_map pod/p1 lpm_trie $B/lpm key=8 value=16 entries=509 flags=1 name=lpm > /dev/null
create_map pod/p1 percpu_array $B/pa key=4 value=44 entries=127 name=pa > /dev/null
create_map pod/p1 ringbuf $B/rb key=0 value=0 entries=65536 name=rb > /dev/null
step created
in_cg pod/p1 mapctl fill $B/h 700 > /dev/null
in_cg pod/p1 mapctl fill $B/hn 1201 > /dev/null
in_cg pod/p1 mapctl fill $B/lpm 307 > /dev/null
in_cg pod/p1 mapctl fill $B/pa 127 > /dev/null
step filled
create_map pod/p1 sockhash $B/sockhash key=4 value=4 entries=4096 name=sockhash > /dev/null
# settle first (a step drains the per-CPU stocks), so the limit leaves no pre-charged slack:
# every page_counter charge now fails, and GFP_ATOMIC ones are forced
step sockhash-created
cg_set pod/p1 memory.max "$(cg_read pod/p1 memory.current)"
mapctl sockhash-fill $B/sockhash 3000 /tmp/sockhash.ready > /out/sockhash-fill.txt &
filler=$!
wait_file /tmp/sockhash.ready
step force-charged
kill "$filler"
wait "$filler" || true
cg_set pod/p1 memory.max max
rm $B/h $B/hn $B/lpm $B/pa $B/rb $B/sockhash
sleep 1
step freed
cg_remove pod/p1
step rmdir
