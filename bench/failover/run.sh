#!/bin/bash
# Failover comparison in the lab's shape (DESIGN.md): tandem under its
# redundancy state machine vs a keepalived (VRRP, advert 100 ms) +
# conntrackd (FTFW) pair in front of kernel forwarding with nftables
# conntrack and SNAT to the floating pool address (deploy/lab/kernel/).
# Each rep holds 100 TCP connections echoing every 10 ms, fails the
# master 3 s in, and records how many survived, the longest gap any saw,
# and when the VIPs were on the other node; then it undoes the failure
# and waits for the pair to be whole again.
#   bench/failover/run.sh [REPS] [SYSTEMS]    (as root; default 10, "tandem kernel")
# Cases: kill (SIGKILL of the master's daemons), box (its in0, out0 and
# sync0 down at once), switch (manual switchover), link (its out0 down).
# Raw lines go to target/bench-failover/raw.txt, the summary to stdout, and
# a timeline picture of every tandem run to target/bench-failover/tandem-CASE-REP.png.
set -u
REPS=${1:-10}
SYSTEMS=${2:-tandem kernel}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/target/bench-failover
mkdir -p "$OUT"
RAW=$OUT/raw.txt
: >"$RAW"
cd "$ROOT" || exit 2
XT=$ROOT/target/debug/xtask
# The comparison pair's packages (Debian 12: keepalived 2.2.7, conntrackd 1.4.7).
missing=""
for p in keepalived conntrackd conntrack nftables python3; do
	dpkg -s $p >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] || apt-get install -y -qq $missing || exit 2
cargo build -q -p xtask || exit 2

tandem() {
	cargo xtask lab up >/dev/null || return 1
	for c in kill box switch link; do
		for r in $(seq "$REPS"); do
			out=$(cargo xtask lab failover $c --picture "$OUT/tandem-$c-$r.png" 2>&1)
			kept=$(sed -n 's/.*kept \([0-9]*\)\/[0-9]*, longest gap.*/\1/p' <<<"$out" | tail -1)
			gap=$(sed -n 's/.*longest gap \([0-9]*\) ms$/\1/p' <<<"$out" | tail -1)
			vip=$(sed -n 's/.*holds the VIPs \([0-9]*\) ms after.*/\1/p' <<<"$out" | tail -1)
			echo "tandem $c $r ${kept:-0} ${gap:-NA} ${vip:-NA}" | tee -a "$RAW"
			[ -n "$kept" ] || echo "$out" >>"$OUT/errors.txt"
		done
	done
	cargo xtask lab down >/dev/null
}

kernel() {
	local K="env P=tnd XT=$XT $ROOT/deploy/lab/kernel/recipe.sh"
	cargo xtask lab down >/dev/null
	$K up && $K start >/dev/null || return 1
	for c in kill box switch link; do
		local kc=$c
		[ $c = box ] && kc=death
		[ $c = link ] && kc=linkdown
		for r in $(seq "$REPS"); do
			line=$($K rep $kc 2>&1 | grep '^case=')
			hold=$(sed -n 's/.*hold=\(.*\)$/\1/p' <<<"$line")
			kept=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['kept'])" "$hold" 2>/dev/null)
			gap=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['max_gap_ms'])" "$hold" 2>/dev/null)
			vip=$(sed -n 's/.*vip_on_b_ms=\([0-9]*\).*/\1/p' <<<"$line")
			echo "kernel $c $r ${kept:-0} ${gap:-NA} ${vip:-NA}" | tee -a "$RAW"
			$K restore $kc >/dev/null 2>&1 || { echo "kernel: restore after $c failed" >&2; $K down; return 1; }
		done
	done
	$K down
}

for s in $SYSTEMS; do
	$s || echo "$s: setup failed" >&2
done

python3 - "$RAW" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print(f"{'system':8} {'case':7} {'reps':>4} {'kept min/med/max':>18} {'gap ms min/med/max':>20} {'VIP moved ms min/med/max':>26}")
for system in dict.fromkeys(r[0] for r in rows):
    for case in dict.fromkeys(r[1] for r in rows if r[0] == system):
        rs = [r for r in rows if r[0] == system and r[1] == case]
        def mmm(i):
            v = [int(r[i]) for r in rs if r[i] != "NA"]
            return "/".join(str(x) for x in (min(v), int(st.median(v)), max(v))) if v else "-"
        print(f"{system:8} {case:7} {len(rs):>4} {mmm(3):>18} {mmm(4):>20} {mmm(5):>26}")
PY
