# dying: gen1 creates and pins two maps and writes 1 MiB to a tmpfs file, then is removed.
#
# The tmpfs pages stay charged to gen1's memcg, so after rmdir the memcg is offline but not
# freed (a dying memcg), while its objcg, and so the maps' charges, are reparented to /pod.
# On 6.7+ the dying memcg's `orig_objcg` still names the objcg the maps point to: the
# snapshot can recover the map's original cgroup (kernel-notes §4.2-4.3). On 6.1 it cannot.
B=$BPFFS
mkdir -p /mnt/dying
mount -t tmpfs tmpfs /mnt/dying
cg_create pod
cg_create pod/gen1
step start
create_map pod/gen1 hash $B/dy_hash key=8 value=100 entries=1031 name=dy_hash > /dev/null
in_cg pod/gen1 mapctl fill $B/dy_hash 300 > /dev/null
create_map pod/gen1 array $B/dy_array key=4 value=64 entries=509 name=dy_array > /dev/null
in_cg pod/gen1 dd if=/dev/zero of=/mnt/dying/held bs=4096 count=256 2> /dev/null
step gen1-made
cg_remove pod/gen1
step rmdir-gen1
note "dying: /mnt/dying/held keeps gen1's memcg alive: $(ls -l /mnt/dying/held)"
