# restart_leak: the built-in restart scenario with one regression: gen2 creates and pins one
# more map (a preallocated hash, about 0.8 MB) and never removes it. tests/test_diff_lab.py
# diffs this run against the committed restart fixture: the default rules must fail it, on
# gen2's and /pod's memory.current at gen2-updated and the new pinned map, and on nothing else.
B=$BPFFS
cg_create pod
cg_create pod/gen1
step start

standard_maps pod/gen1

step gen1-exited
cg_remove pod/gen1
step rmdir-gen1

cg_create pod/gen2
step gen2-start
in_cg pod/gen2 mapctl fill $B/hash_prealloc 200 3001
in_cg pod/gen2 mapctl fill $B/hash_noprealloc 400 1201
in_cg pod/gen2 mapctl fill $B/percpu_hash 100 500
in_cg pod/gen2 mapctl fill $B/lru_hash 300 1000
in_cg pod/gen2 mapctl fill $B/array 1000
in_cg pod/gen2 mapctl fill $B/percpu_array 509
in_cg pod/gen2 mapctl fill $B/lpm_trie 300 997
create_map pod/gen2 hash $B/leaked key=8 value=100 entries=4099 name=leaked > /dev/null
step gen2-updated
