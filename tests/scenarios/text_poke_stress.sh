# text_poke_stress: patch tracepoint sites in and out while the other vCPU runs through them.
#
# Each round enables and disables three kmem tracepoints: every change rewrites the sites'
# static-key jumps and static calls with the kernel's int3-based text_poke_bp. A background
# loop keeps allocating and freeing pages and slab objects, so the sites are being executed
# while they are rewritten. Under QEMU 7.2's multi-threaded TCG a 6.12 guest oopses here
# ("Oops: int3" at a patched site) within 20-30 rounds; under single-threaded TCG it must
# not. ROUNDS (default 60) sets the count.
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T
EV="kmem/mm_page_alloc kmem/mm_page_free kmem/kmalloc"
step start
( while :; do dd if=/dev/zero of=/dev/null bs=64k count=200 2> /dev/null; cat /proc/meminfo > /dev/null; done ) &
LOAD=$!
i=0
while [ $i -lt "${ROUNDS:-60}" ]; do
	for e in $EV; do echo 1 > $T/events/$e/enable; done
	for e in $EV; do echo 0 > $T/events/$e/enable; done
	i=$((i + 1))
	[ $((i % 10)) -ne 0 ] || echo "text_poke_stress: round $i" > /dev/kmsg  # how far, if it oopses
done
kill $LOAD
note "rounds: $i"
step done
