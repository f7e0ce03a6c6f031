# ghost: as restart, but gen1 is kept, unpopulated, with a memory.max; gen2's updates keep charging gen1
#
# gen1's processes all exit but the cgroup stays: an online memcg with no tasks (a "ghost")
# that the maps' objcg still points to. A limit of memory.current + 256 KiB is set on it;
# gen2 then inserts new keys into the no-prealloc hash and the LPM trie. Those elements are
# charged to gen1, not gen2; once gen1 is at its limit the GFP_NOWAIT allocations fail
# (updates return ENOMEM: see ghost-updates.txt) without a memory.events entry.
B=$BPFFS
cg_create pod
cg_create pod/gen1
step start
standard_maps pod/gen1
step gen1-exited
cur=$(cg_read pod/gen1 memory.current)
cg_set pod/gen1 memory.max $((cur + 262144))
note "gen1 memory.max set to $((cur + 262144)) (memory.current $cur + 256 KiB)"
step gen1-limited

cg_create pod/gen2
step gen2-start
in_cg pod/gen2 mapctl fill $B/hash_noprealloc 1200 1201 > /out/ghost-updates.txt
in_cg pod/gen2 mapctl fill $B/lpm_trie 600 997 >> /out/ghost-updates.txt
in_cg pod/gen2 mapctl fill $B/hash_prealloc 1000 3001 >> /out/ghost-updates.txt
step gen2-updated
in_cg pod/gen2 mapctl fill $B/hash_noprealloc 2500 2401 >> /out/ghost-updates.txt
step gen2-updated-more
note "updates: $(tr '\n' ';' < /out/ghost-updates.txt)"
