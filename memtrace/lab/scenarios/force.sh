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
# memory.max = memory.current, set again until a settle leaves memory.current there: a late
# RCU free of the exited mapctl's objects would leave the step below its limit
cur=$(cg_read pod/genf memory.current)
cg_set pod/genf memory.max "$cur"
mt_settle
_n=0
until [ "$(cg_read pod/genf memory.current)" = "$cur" ] || [ $_n -ge 10 ]; do
	cur=$(cg_read pod/genf memory.current)
	cg_set pod/genf memory.max "$cur"
	mt_settle
	_n=$((_n + 1))
done
note "genf memory.max set to memory.current = $cur"
note "limit set again $_n times"
step limit-set
mapctl sockhash-fill $B/sockhash 3000 /tmp/sockhash.ready > /out/sockhash-fill.txt &
filler=$!
wait_file /tmp/sockhash.ready
note "sockhash-fill: $(cat /out/sockhash-fill.txt)"
step force-charged
kill "$filler"
wait "$filler" || true
# the elements and psock links go with their sockets through RCU (socket free, psock
# destroy work, kfree_rcu batches of up to 5 s): settle until genf is back at its limit (seen:
# after 1 to 15 settles), so no late free of genf's lands between the step's marker and its
# reading (a bound of limit + 2 pages once let a run stop with a page still pending), or
# until it holds still over 6 s: a CI run on 6.1 stayed one page above the limit for 50
# settles (a page of its objcg's pre-charged bytes, not a pending free)
genf_back() {
	mt_current_at_most pod/genf "$cur" || mt_holds_still pod/genf 6
}
mt_settle_until 50 genf_back
note "sockets closed: genf at limit + $(( $(cg_read pod/genf memory.current) - cur )) B after $MT_SETTLES settles"
step sockets-closed
