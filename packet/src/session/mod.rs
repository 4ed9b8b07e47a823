//! Sessions: the per-worker state of every flow the node forwards.
//!
//! Design: a session is created once, by the worker that owns the flow
//! ([`key::FlowKey::owner_hash`], or the NAT port range for translated
//! return traffic), when policy allows its first packet. Both directions
//! (the reply one after NAT) index the same record in [`table::Table`]. The
//! record is small and plain (`Copy`, no heap) so a table is one allocation
//! and a session can be copied into a sync message or an offload entry as is.

pub mod key;
pub mod table;
pub mod tcp;

pub use key::{FlowKey, Placement};
pub use table::{Table, TableFull};
pub use tandem_control::config::Timeouts;
pub use tcp::{Side, TcpState};

use crate::wire::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// Where a session's first packet came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Initiated from the inside interface (ingress "I").
    Inside,
    /// Initiated from the outside interface (egress "O").
    Outside,
}

/// What the session's packets get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum SessionAction {
    #[default]
    Forward = 0,
    Drop = 1,
    Reject = 2,
}

mod flag {
    pub const LIVE: u8 = 1;
    pub const NAT: u8 = 2;
    pub const OUTSIDE: u8 = 4;
    /// Installed from the peer's replication, not created here.
    pub const SYNCED: u8 = 8;
    /// Both directions are in the XDP flow map (the fast path).
    pub const OFFLOADED: u8 = 16;
    /// Offloading failed (map full or refused): not tried again.
    pub const NO_OFFLOAD: u8 = 32;
    /// (Active) the peer may lack the session's latest record: an event
    /// about it could not be queued, or the peer refused it. Repair sends
    /// it again.
    pub const UNSENT: u8 = 64;
    /// (Active) repair sent it again once after the peer refused it.
    pub const RETRIED: u8 = 128;
}

/// What a translated session's binding is (`Session::xlate`).
mod xlate {
    /// The translation rewrites the initiator's destination: `nat_addr`
    /// and `nat_port` are the inside host's (an outside flow through a
    /// mapping, a forwarded port or a static translation).
    pub const DNAT: u8 = 1;
    /// The binding is a static rule's (a forward or a 1:1 translation),
    /// not a pool pair.
    pub const STATIC: u8 = 2;
    /// Inside to inside through an outside address (hairpinning): the
    /// source-translated direction goes through the services again, as a
    /// packet from outside.
    pub const HAIRPIN: u8 = 4;
}

/// One session: 104 bytes (checked by `size_is_stated` below).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Session {
    /// The initiator's direction as it arrived (before NAT).
    pub key: FlowKey,
    /// Node-unique id: the worker's sequence interleaved with the others'.
    pub id: u64,
    /// Packets and bytes, indexed by [`Side`] (initiator, responder).
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Seconds on the worker's clock.
    pub created: u32,
    pub last_seen: u32,
    /// Translated source of the initiator (NAPT44), when `flags & NAT`.
    pub nat_addr: [u8; 4],
    pub nat_port: u16,
    /// Wheel slot the session is linked in (the table's business).
    pub tick: u16,
    /// [`TcpState`] for TCP sessions.
    pub state: u8,
    pub action: u8,
    pub service_set: u8,
    flags: u8,
    /// For a synced session: the replication generation that last
    /// installed or refreshed it (a cold sync sweeps older ones).
    pub generation: u8,
    /// Non-zero: a stub. The peer, running another number of workers,
    /// made this NAT session on the worker its hash picks there; here its
    /// port belongs to worker `remote - 1`, which holds the session. This
    /// worker, which the flow's hash picks here, keeps the stub to hand
    /// the flow's packets and the peer's records for it on to that worker.
    pub remote: u8,
    /// [`xlate`] bits.
    xlate: u8,
}

impl Session {
    pub fn new(key: FlowKey, id: u64, origin: Origin, service_set: u8, now: u32) -> Self {
        let mut flags = flag::LIVE;
        if origin == Origin::Outside {
            flags |= flag::OUTSIDE;
        }
        Self {
            key,
            id,
            created: now,
            last_seen: now,
            service_set,
            flags,
            ..Self::default()
        }
    }

    pub fn is_live(&self) -> bool {
        self.flags & flag::LIVE != 0
    }

    pub fn is_synced(&self) -> bool {
        self.flags & flag::SYNCED != 0
    }

    /// Marks the session as the peer's, installed by replication
    /// `generation`.
    pub fn set_synced(&mut self, generation: u8) {
        self.flags |= flag::SYNCED;
        self.generation = generation;
    }

    pub fn is_offloaded(&self) -> bool {
        self.flags & flag::OFFLOADED != 0
    }

    pub fn set_offloaded(&mut self, on: bool) {
        if on {
            self.flags |= flag::OFFLOADED;
        } else {
            self.flags &= !flag::OFFLOADED;
        }
    }

    /// The worker holding the session this stub stands for.
    pub fn stub_for(&self) -> Option<usize> {
        self.remote.checked_sub(1).map(usize::from)
    }

    /// Whether repair must send the session to the peer again.
    pub fn is_unsent(&self) -> bool {
        self.flags & flag::UNSENT != 0
    }

    pub fn set_unsent(&mut self, on: bool) {
        if on {
            self.flags |= flag::UNSENT;
        } else {
            self.flags &= !flag::UNSENT;
        }
    }

    /// Whether repair already sent it again after the peer refused it.
    pub fn was_retried(&self) -> bool {
        self.flags & flag::RETRIED != 0
    }

    pub fn set_retried(&mut self) {
        self.flags |= flag::RETRIED;
    }

    pub fn offload_refused(&self) -> bool {
        self.flags & flag::NO_OFFLOAD != 0
    }

    pub fn refuse_offload(&mut self) {
        self.flags |= flag::NO_OFFLOAD;
    }

    pub fn origin(&self) -> Origin {
        if self.flags & flag::OUTSIDE != 0 {
            Origin::Outside
        } else {
            Origin::Inside
        }
    }

    pub fn set_nat(&mut self, addr: [u8; 4], port: u16) {
        self.nat_addr = addr;
        self.nat_port = port;
        self.flags |= flag::NAT;
    }

    /// The initiator's translated (address, port), if NAT applies: its
    /// source's, or with [`Self::is_dnat`] its destination's.
    pub fn nat(&self) -> Option<([u8; 4], u16)> {
        (self.flags & flag::NAT != 0).then_some((self.nat_addr, self.nat_port))
    }

    /// Translates the initiator's destination to (`addr`, `port`).
    pub fn set_dnat(&mut self, addr: [u8; 4], port: u16) {
        self.set_nat(addr, port);
        self.xlate |= xlate::DNAT;
    }

    /// Whether the translation rewrites the initiator's destination.
    pub fn is_dnat(&self) -> bool {
        self.xlate & xlate::DNAT != 0
    }

    /// Marks the binding a static rule's (no pool pair).
    pub fn set_static(&mut self) {
        self.xlate |= xlate::STATIC;
    }

    pub fn is_static(&self) -> bool {
        self.xlate & xlate::STATIC != 0
    }

    /// Marks the session hairpinned (see [`xlate::HAIRPIN`]).
    pub fn set_hairpin(&mut self) {
        self.xlate |= xlate::HAIRPIN;
    }

    pub fn is_hairpin(&self) -> bool {
        self.xlate & xlate::HAIRPIN != 0
    }

    /// Where the side that is not translated at the source sends: the
    /// packets of `side` leave with their source rewritten to this, if
    /// any (the pool pair a mapping leaves from, or a forward's or
    /// static translation's outside address).
    pub fn source_nat(&self, side: Side) -> Option<([u8; 4], u16)> {
        let (addr, port) = self.nat()?;
        match (self.is_dnat(), side) {
            (false, Side::Initiator) => Some((addr, port)),
            (true, Side::Responder) => Some((self.key.dst_v4()?, self.key.dport)),
            _ => None,
        }
    }

    /// The inside endpoint of a translated session: the initiator's
    /// source, or with [`Self::is_dnat`] its translated destination.
    pub fn inside_endpoint(&self) -> Option<([u8; 4], u16)> {
        if self.is_dnat() {
            self.nat()
        } else {
            Some((self.key.src_v4()?, self.key.sport))
        }
    }

    pub fn tcp_state(&self) -> Option<TcpState> {
        (self.key.proto == PROTO_TCP).then(|| TcpState::from_u8(self.state))
    }

    pub fn action(&self) -> SessionAction {
        match self.action {
            1 => SessionAction::Drop,
            2 => SessionAction::Reject,
            _ => SessionAction::Forward,
        }
    }

    fn is_echo(&self) -> bool {
        matches!(self.key.proto, PROTO_ICMP | PROTO_ICMPV6) && self.key.sport == self.key.dport
    }

    /// The key of the responder's packets: the reverse of the initiator's,
    /// addressed to the translated endpoint when NAT applies.
    pub fn reply_key(&self) -> FlowKey {
        let mut k = self.key.reversed();
        if let Some((addr, port)) = self.nat().filter(|_| self.is_dnat()) {
            // The responder (the inside host) answers from where the
            // initiator's packets were sent on to.
            k.src = key::mapped(addr);
            if self.is_echo() {
                k.dport = port;
            }
            k.sport = port;
        } else if let Some((addr, port)) = self.nat() {
            k.dst = key::mapped(addr);
            if self.is_echo() {
                k.sport = port;
            }
            k.dport = port;
        }
        k
    }

    /// Counts one packet of `len` bytes from `side` at `now`.
    #[inline]
    pub fn count(&mut self, side: Side, len: usize, now: u32) {
        let i = side as usize;
        self.packets[i] += 1;
        self.bytes[i] += len as u64;
        self.last_seen = now;
    }
}

/// The idle timeout of `s` under `t`, in seconds.
pub fn timeout(t: &Timeouts, s: &Session) -> u32 {
    if s.remote != 0 {
        // A stub lives as long as the session it stands for, which
        // removes it when it goes.
        return u32::MAX;
    }
    match s.key.proto {
        PROTO_TCP => match TcpState::from_u8(s.state) {
            TcpState::Closed => t.tcp_closed,
            TcpState::SynSent | TcpState::SynReceived => t.tcp_opening,
            TcpState::Established => t.tcp_established,
            TcpState::TimeWait => t.tcp_time_wait,
            _ => t.tcp_closing,
        },
        PROTO_UDP => t.udp,
        PROTO_ICMP | PROTO_ICMPV6 => t.icmp,
        _ => t.other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_stated() {
        // Documented in docs/architecture.md ("Sessions"); keep it honest.
        assert_eq!(std::mem::size_of::<Session>(), 104);
    }

    #[test]
    fn echo_reply_key_translates_the_identifier() {
        let mut s = Session::new(
            FlowKey::v4([10, 0, 0, 1], [8, 8, 8, 8], 77, 77, PROTO_ICMP),
            1,
            Origin::Inside,
            0,
            0,
        );
        s.set_nat([198, 18, 2, 100], 1500);
        assert_eq!(
            s.reply_key(),
            FlowKey::v4([8, 8, 8, 8], [198, 18, 2, 100], 1500, 1500, PROTO_ICMP)
        );
    }
}
