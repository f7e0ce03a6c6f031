# restart: gen1 creates, fills and pins maps of nine types, exits and is removed; gen2 reopens and updates them
#
# Every map is created in its own step inside pod/gen1, which holds nothing else, so the
# step's memory.current delta of pod/gen1 measures what creating (then filling) that map
# charged. Sizes are odd on purpose: an off-by-one shows.
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
step gen2-updated
