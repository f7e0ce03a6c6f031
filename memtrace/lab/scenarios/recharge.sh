# recharge: gen2 moves gen1's inner map by a map-in-map copy: new inner, copy entries, swap, drop old
#
# The user-space "recharge" reviewers proposed. gen1 pins an outer hash-of-maps whose slot 0
# holds an inner hash (prealloc, 997 of 1021 entries used) and exits; gen1 is removed, so the
# old inner map's charge is reparented to pod. gen2 creates a new inner map (charged to
# gen2), copies every entry, swaps it into slot 0, and drops the old one. Steps show the
# double charge between copy and drop. At gen2-start the host also dumps the guest as
# vmcore-gen2-start: the state a recharge what-if reads before the copy.
B=$BPFFS
cg_create pod
cg_create pod/gen1
step start
create_map pod/gen1 hash $B/inner_tmpl key=4 value=64 entries=1021 name=inner_tmpl > /dev/null
create_map pod/gen1 hash_of_maps $B/outer key=4 value=4 entries=7 name=outer inner=$B/inner_tmpl > /dev/null
rm $B/inner_tmpl
step create-outer
create_map pod/gen1 hash $B/inner_v1 key=4 value=64 entries=1021 name=inner_v1 > /dev/null
step create-inner_v1
in_cg pod/gen1 mapctl fill $B/inner_v1 997 > /dev/null
in_cg pod/gen1 mapctl outer-set $B/outer 0 $B/inner_v1 > /dev/null
rm $B/inner_v1
step gen1-loaded
cg_remove pod/gen1
step rmdir-gen1
cg_create pod/gen2
step gen2-start
vmcore_at gen2-start
old=$(mapctl inner-id $B/outer 0)
note "old inner map id $old"
in_cg pod/gen2 mapctl clone id:$old $B/inner_v2 > /out/recharge-clone.txt
map_created "$(sed 's/.*dst=\([0-9]*\).*/\1/' /out/recharge-clone.txt)" hash $B/inner_v2 pod/gen2
step recharge-copied
in_cg pod/gen2 mapctl outer-set $B/outer 0 $B/inner_v2 > /dev/null
step recharge-swapped
rm $B/inner_v2
# the old inner map is freed after RCU grace periods (6.12: RCU tasks trace too) and the
# deferred map-free work: settle until pod holds under 16 pages beside gen2 (12-16 KiB seen)
pod_beside_gen2_under() {
	[ $(($(cg_read pod memory.current) - $(cg_read pod/gen2 memory.current))) -lt "$1" ]
}
mt_settle_until 50 pod_beside_gen2_under 65536
note "old inner map gone after $MT_SETTLES settles"
step recharge-old-dropped
note "new inner map id $(mapctl inner-id $B/outer 0)"
