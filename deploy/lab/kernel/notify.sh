#!/bin/sh
# Kernel baseline: keepalived notify hook, after conntrackd's
# doc/sync/primary-backup.sh. keepalived runs it inside the node's namespace:
#   notify.sh NODE STATE     NODE = a|b, STATE = master|backup|fault|stop
# It drives this node's conntrackd (config /run/tandem-kernel/conntrackd-NODE.conf)
# and, once done, writes STATE to /run/tandem-kernel/NODE/state (the readiness
# signal for the harness). Each step is logged with a timestamp to
# /run/tandem-kernel/NODE/notify.log.
#
# Unlike primary-backup.sh it does not start conntrackd when it is missing:
# the harness starts conntrackd before keepalived and owns the process.

NODE="$1"
STATE="$2"
DIR=/run/tandem-kernel
RUN="$DIR/$NODE"
CONF="$DIR/conntrackd-$NODE.conf"
CTD=/usr/sbin/conntrackd
LOG="$RUN/notify.log"

# With "DisableExternalCache On" the peer's entries are injected straight
# into this node's kernel table, and -t would flush them all (the scheduled
# flush deletes every entry not ignored by the Filter) after PurgeTimeout:
# skip it then.
INJECT=
grep -Eqi '^[[:space:]]*DisableExternalCache[[:space:]]+(on|yes)' "$CONF" && INJECT=1

log() { echo "$(date +%s.%N) $STATE: $*" >>"$LOG"; }

ctd() {
	if "$CTD" -C "$CONF" "$@" >>"$LOG" 2>&1; then
		log "conntrackd $* ok"
	else
		log "conntrackd $* FAILED"
	fi
}

# keepalived forks one hook per transition; back-to-back transitions
# (e.g. FAULT -> BACKUP -> MASTER) must not interleave their conntrackd calls.
exec 9>>"$RUN/notify.lock"
flock 9

log "begin"
case "$STATE" in
master)
	# Take over: push the peer's replicated entries (external cache) into
	# the kernel table so the connections' packets are ESTABLISHED here...
	ctd -c
	# ...then start afresh as the primary: drop both caches, reload the
	# internal cache from the kernel (now including the committed entries)
	# and send it all to the peer, if it is alive, as its new external cache.
	ctd -f
	ctd -R
	ctd -B
	;;
backup)
	# The kernel entries left from a former mastership are zombies here:
	# schedule their flush in PurgeTimeout seconds (-t; cancelled by -c/-f
	# on becoming MASTER again). Then ask the master for a full dump so the
	# external cache is complete.
	[ "$INJECT" ] || ctd -t
	ctd -n
	;;
fault | stop)
	[ "$INJECT" ] || ctd -t
	;;
*)
	log "unknown state"
	exit 1
	;;
esac
echo "$STATE" >"$RUN/state"
log "end"
exit 0
