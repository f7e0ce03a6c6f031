# force: a BPF map charge admitted above memory.max (a force-charge) through sockhash updates
#
# pod/genf creates a sockhash and exits. Its memory.max is then set to its memory.current.
# A task in the root cgroup inserts 3000 UDP sockets into the map: each element (and its
# sk_psock link) is allocated by bpf_map_kmalloc_node/bpf_map_kzalloc with GFP_ATOMIC under
# the map's memcg. GFP_ATOMIC cannot reclaim, carries __GFP_HIGH, so try_charge_memcg takes
# the "force" path: memory.current goes above memory.max (and 6.0+ counts a "max" event).
B=$BPFFS
cg_create pod
cg_create pod/genf
step start
create_map pod/genf sockhash $B/sockhash key=4 value=4 entries=4096 name=sockhash > /dev/null
step create-sockhash
cur=$(cg_read pod/genf memory.current)
cg_set pod/genf memory.max "$cur"
note "genf memory.max set to memory.current = $cur"
step limit-set
mapctl sockhash-fill $B/sockhash 3000 /tmp/sockhash.ready > /out/sockhash-fill.txt &
filler=$!
wait_file /tmp/sockhash.ready
note "sockhash-fill: $(cat /out/sockhash-fill.txt)"
step force-charged
kill "$filler"
wait "$filler" || true
step sockets-closed
