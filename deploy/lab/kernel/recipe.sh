#!/bin/bash
# Kernel baseline (keepalived + conntrackd + nftables) in the lab's namespace
# shape: the verified reference sequence for the benchmark harness to port.
#   P=kb deploy/lab/kernel/recipe.sh up|start|ready|rep CASE|restore CASE|stop|down
# P is the namespace prefix (kb in the scratch lab, tnd in the harness);
# CASE is death|kill|switch|linkdown. Node A is MASTER at the start of a rep;
# `restore` brings A back and hands mastership back to it.
# Needs: iproute2, nftables, conntrack, conntrackd, keepalived, python3
# (timing arithmetic only), and xtask (traffic serve/hold).
set -u
P=${P:-kb}
D=${D:-$(cd "$(dirname "$0")" && pwd)}
R=/run/tandem-kernel
XT=${XT:-$D/../../../target/debug/xtask}

up() {
	for ns in $P-sw $P-client $P-server $P-a $P-b; do
		ip netns add $ns
		ip -n $ns link set lo up
	done
	for br in br-in br-out; do
		ip -n $P-sw link add $br type bridge
		ip -n $P-sw link set $br up
	done
	while read -r ns dev port br; do
		ip link add $dev netns $P-$ns type veth peer name $port netns $P-sw
		ip -n $P-sw link set $port master $br
		ip -n $P-sw link set $port up
		ip -n $P-$ns link set $dev up
	done <<-EOF
		client eth0 cl0 br-in
		a in0 a-in br-in
		b in0 b-in br-in
		server eth0 sv0 br-out
		a out0 a-out br-out
		b out0 b-out br-out
	EOF
	ip link add sync0 netns $P-a type veth peer name sync0 netns $P-b
	ip -n $P-a link set sync0 up
	ip -n $P-b link set sync0 up
	ip -n $P-client addr add 198.18.1.10/24 dev eth0
	ip -n $P-client route add default via 198.18.1.1
	ip -n $P-server addr add 198.18.2.10/24 dev eth0
	ip -n $P-server route add default via 198.18.2.1
	ip -n $P-a addr add 198.18.1.2/24 dev in0
	ip -n $P-a addr add 198.18.2.2/24 dev out0
	ip -n $P-a addr add 198.18.9.1/30 dev sync0
	ip -n $P-b addr add 198.18.1.3/24 dev in0
	ip -n $P-b addr add 198.18.2.3/24 dev out0
	ip -n $P-b addr add 198.18.9.2/30 dev sync0
}

state() { cat $R/$1/state 2>/dev/null || echo none; }

# wait_state NODE STATE SECONDS: the notify hook writes the state file when done
wait_state() {
	local end=$(($(date +%s%N) + $3 * 1000000000))
	while [ "$(date +%s%N)" -lt $end ]; do
		[ "$(state $1)" = "$2" ] && return 0
		sleep 0.05
	done
	echo "timeout: $1 is $(state $1), wanted $2" >&2
	return 1
}

ctd() { local n=$1; shift; ip netns exec $P-$n conntrackd -C $R/conntrackd-$n.conf "$@"; }

start_conntrackd() {
	local n=$1
	# left behind by a SIGKILLed conntrackd; it refuses to start while they exist
	rm -f $R/$n/conntrackd.lock $R/$n/conntrackd.ctl
	ip netns exec $P-$n conntrackd -C $R/conntrackd-$n.conf >>$R/$n/conntrackd.out 2>&1 &
	echo $! >$R/$n/conntrackd.pid
	for _ in $(seq 100); do
		ctd $n -s >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "conntrackd $n did not come up" >&2
	return 1
}

start_keepalived() {
	local n=$1
	rm -f $R/$n/state
	ip netns exec $P-$n keepalived -n -l -D -P -f $R/keepalived-$n.conf \
		-p $R/$n/keepalived.pid -r $R/$n/vrrp.pid >>$R/$n/keepalived.out 2>&1 &
}

start() {
	install -d -m 0755 $R $R/a $R/b
	install -m 0644 $D/nft.conf $D/conntrackd-a.conf $D/conntrackd-b.conf \
		$D/keepalived-a.conf $D/keepalived-b.conf $R/
	install -m 0755 $D/notify.sh $R/notify.sh
	for n in a b; do
		ip netns exec $P-$n sysctl -qw net.ipv4.ip_forward=1
		ip netns exec $P-$n sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
		ip netns exec $P-$n sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=0
		ip netns exec $P-$n nft -f $R/nft.conf
	done
	# conntrackd first: the keepalived hooks talk to it
	start_conntrackd a && start_conntrackd b || return 1
	# A first, so it is MASTER (nopreempt: B joining later stays BACKUP)
	start_keepalived a
	wait_state a master 10 || return 1
	start_keepalived b
	wait_state b backup 10
}

vips() { ip -n $P-$1 -4 -o addr show | grep -oE '198\.18\.(1\.1|2\.1|2\.100)/32' | tr '\n' ' '; }

ready() {
	[ "$(state a)" = master ] && [ "$(state b)" = backup ] || { echo "states a=$(state a) b=$(state b)"; return 1; }
	[ "$(vips a)" = "198.18.1.1/32 198.18.2.1/32 198.18.2.100/32 " ] && [ -z "$(vips b)" ] || { echo "VIPs a=[$(vips a)] b=[$(vips b)]"; return 1; }
	ctd a -s >/dev/null && ctd b -s >/dev/null || { echo "conntrackd not answering"; return 1; }
	echo ready
}

# count ESTABLISHED port-7 flows in node $1's external cache (the replicated state)
synced() { ctd $1 -e | grep -c 'ESTABLISHED.*dport=7 '; }

trigger() {
	case $1 in
	death)
		# at once, as for tandem (cargo xtask lab failover box)
		printf 'link set sync0 down\nlink set in0 down\nlink set out0 down\n' | ip -n $P-a -batch -
		;;
	kill) kill -KILL "$(cat $R/a/vrrp.pid)" "$(cat $R/a/keepalived.pid)" "$(cat $R/a/conntrackd.pid)" ;;
	switch) echo 1 >$R/a/release ;;
	linkdown) ip -n $P-a link set out0 down ;;
	esac
}

# handover TO FROM: make the BACKUP TO master by releasing the MASTER FROM
handover() {
	rm -f $R/$1/state $R/$2/state
	echo 1 >$R/$2/release
	wait_state $1 master 10 && wait_state $2 fault 10 || return 1
	rm -f $R/$2/state
	echo 0 >$R/$2/release
	wait_state $2 backup 10
}

restore() {
	rm -f $R/a/state
	case $1 in
	death)
		ip -n $P-a link set in0 up
		ip -n $P-a link set out0 up
		ip -n $P-a link set sync0 up
		;;
	kill)
		echo "VIPs left on A: $(vips a)"
		start_conntrackd a || return 1
		start_keepalived a # removes the leftover VIPs as it starts in BACKUP
		;;
	switch) echo 0 >$R/a/release ;;
	linkdown) ip -n $P-a link set out0 up ;;
	esac
	wait_state a backup 15 || return 1
	handover a b || return 1
	ready
}

rep() {
	local c=$1 out
	out=$(mktemp)
	ready >/dev/null || { ready; return 1; }
	timeout 25 ip netns exec $P-server $XT traffic serve --port 7 --seconds 14 >/dev/null 2>&1 &
	local srv=$!
	sleep 0.3
	timeout 20 ip netns exec $P-client $XT traffic hold --server 198.18.2.10 --conns 100 --seconds 8 --interval-ms 10 >$out 2>&1 &
	local cl=$!
	sleep 3
	local n
	n=$(synced b)
	local t0 tv=""
	t0=$(date +%s%N)
	trigger $c
	while [ $(($(date +%s%N) - t0)) -lt 5000000000 ]; do
		if ip -n $P-b -4 -o addr show dev out0 | grep -q ' 198\.18\.2\.100/'; then
			tv=$((($(date +%s%N) - t0) / 1000000))
			break
		fi
		sleep 0.005
	done
	wait $cl
	# keepalived runs notify_master right after it added the VIPs
	local mb me
	mb=$(awk '/ master: begin/ {t=$1} END {print t}' $R/b/notify.log)
	me=$(awk '/ master: end/ {t=$1} END {print t}' $R/b/notify.log)
	echo "case=$c b_synced=$n vip_on_b_ms=$tv b_master_hook_ms=$(python3 -c "print(round(($mb*1e9-$t0)/1e6))") b_commit_done_ms=$(python3 -c "print(round(($me*1e9-$t0)/1e6))") hold=$(tail -1 $out)"
	wait $srv 2>/dev/null
	rm -f $out
}

stop() {
	local n p
	for n in a b; do
		[ -f $R/$n/keepalived.pid ] && kill -TERM "$(cat $R/$n/keepalived.pid)" 2>/dev/null
	done
	# keepalived takes ~1 s to stop (priority-0 advert, VIP removal, notify_stop)
	for n in a b; do
		p=$(cat $R/$n/keepalived.pid 2>/dev/null) || continue
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
	done
	for n in a b; do
		[ -f $R/$n/conntrackd.pid ] && kill -TERM "$(cat $R/$n/conntrackd.pid)" 2>/dev/null
	done
	sleep 0.5
}

down() {
	stop
	for ns in $P-client $P-server $P-a $P-b $P-sw; do ip netns del $ns 2>/dev/null; done
	rm -rf $R
}

"$@"
