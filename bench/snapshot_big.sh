# snapshot-big: a 1M-element preallocated hash and a 1M-element no-prealloc hash in cgroup big (needs --memory 2048)
B=$BPFFS
cg_create big
step start
create_map big hash "$B/big_prealloc" name=big_prealloc key=8 value=64 entries=1000003 > /dev/null
in_cg big mapctl fill "$B/big_prealloc" 1000000 > /dev/null
step made-big_prealloc
create_map big hash "$B/big_noprealloc" name=big_noprealloc key=8 value=64 entries=1000003 flags=1 > /dev/null
in_cg big mapctl fill "$B/big_noprealloc" 1000000 > /dev/null
step made-big_noprealloc
