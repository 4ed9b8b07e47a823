//! Heartbeats: one UDP datagram per path every keepalive interval (and at
//! once when the state machine announces a change), carrying the sender's
//! [`PeerView`] and echoing the last heartbeat it heard on that path, so
//! each side measures the round trip the way DPD's R-U-THERE/ACK does.
//!
//! Format (128 bytes, big-endian):
//! ```text
//!  0 "TNDH"  4 version (2)  5 state  6 flags  7 priority
//!  8 group (u32)  12 node id (u32)  16 incarnation (u64)  24 seq (u64)
//! 32 echo seq (u64)  40 echo hold (u32, microseconds)  44 path (u8)
//! 45 sync state (u8)  46..48 zero  48 echo incarnation (u64)
//! 56 sessions (u64)  64 term (u64)  72..96 zero
//! 96..128 HMAC-SHA256 tag, or zeros
//! ```
//! flags: 1 healthy, 2 released, 4 acquire, 8 force.
//!
//! Freshness does not rest on any clock. The incarnation is a random
//! number drawn at start; within one, the sequence orders heartbeats, so
//! a replayed or late one is refused. A heartbeat of an incarnation not
//! yet accepted (the peer's first, or a restarted peer's) is accepted only
//! once it echoes one of this node's own heartbeats (its incarnation and
//! sequence) sent within the dead interval: it was made after hearing
//! this node now, so it cannot be a recording. Until then it is held
//! ("unproven") and echoed, so that the peer can prove this node's own
//! incarnation in turn.
//!
//! With keys, the tag is HMAC-SHA256 under a key derived from the pair's
//! shared secret for heartbeats only; heartbeats go out under the first
//! key and any configured key is accepted (a rollover). Without keys the
//! tag is zero and a tagged heartbeat is refused (the two nodes disagree
//! on the key).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::fsm::{PeerView, State};

pub const LEN: usize = 128;
const BODY: usize = 96;
const MAGIC: &[u8; 4] = b"TNDH";
const VERSION: u8 = 2;
/// Heartbeats' UDP port unless configured.
pub const PORT: u16 = 7469;

type HmacSha256 = Hmac<Sha256>;

/// One heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub view: PeerView,
    pub group: u32,
    pub incarnation: u64,
    pub seq: u64,
    /// The last heartbeat heard from the peer on this path (its
    /// incarnation and seq; 0: none yet) and how long ago, in
    /// microseconds.
    pub echo_incarnation: u64,
    pub echo_seq: u64,
    pub echo_hold_us: u32,
    /// The sender's index of the path.
    pub path: u8,
    /// The sender's sync state: 0 off, 1 cold, 2 hot (also
    /// `view.hot`).
    pub sync: u8,
    /// Sessions the sender holds.
    pub sessions: u64,
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("not a heartbeat (length or magic)")]
    Malformed,
    #[error("heartbeat version {0} (this node speaks 2)")]
    Version(u8),
    #[error("a field out of range")]
    Invalid,
    #[error("authentication failed")]
    Auth,
    #[error("another redundancy group")]
    Group,
    #[error("this node's own node id")]
    OwnId,
    #[error("older than one already heard (replayed or reordered)")]
    Stale,
    #[error("a new incarnation that has not yet echoed a recent heartbeat of this node")]
    Unproven,
}

/// The heartbeat key derived from the pair's secret.
pub fn derive_key(psk: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(psk).expect("HMAC takes keys of any length");
    m.update(b"tandem heartbeat 1");
    m.finalize().into_bytes().into()
}

fn tag(key: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(body);
    m.finalize().into_bytes().into()
}

impl Heartbeat {
    pub fn encode(&self, key: Option<&[u8; 32]>) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        let v = &self.view;
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = v.state as u8;
        b[6] = u8::from(v.healthy)
            | u8::from(v.released) << 1
            | u8::from(v.acquire) << 2
            | u8::from(v.force) << 3;
        b[7] = v.priority;
        b[8..12].copy_from_slice(&self.group.to_be_bytes());
        b[12..16].copy_from_slice(&v.node_id.to_be_bytes());
        b[16..24].copy_from_slice(&self.incarnation.to_be_bytes());
        b[24..32].copy_from_slice(&self.seq.to_be_bytes());
        b[32..40].copy_from_slice(&self.echo_seq.to_be_bytes());
        b[40..44].copy_from_slice(&self.echo_hold_us.to_be_bytes());
        b[44] = self.path;
        b[45] = self.sync;
        b[48..56].copy_from_slice(&self.echo_incarnation.to_be_bytes());
        b[56..64].copy_from_slice(&self.sessions.to_be_bytes());
        b[64..72].copy_from_slice(&v.term.to_be_bytes());
        if let Some(k) = key {
            let t = tag(k, &b[..BODY]);
            b[BODY..].copy_from_slice(&t);
        }
        b
    }

    /// Checks shape and tag (under any of `keys`; with none, an untagged
    /// heartbeat); the caller checks group, id and order.
    pub fn decode(b: &[u8], keys: &[[u8; 32]]) -> Result<Self, Reject> {
        if b.len() != LEN || &b[..4] != MAGIC {
            return Err(Reject::Malformed);
        }
        if b[4] != VERSION {
            return Err(Reject::Version(b[4]));
        }
        let tagged = &b[BODY..];
        if keys.is_empty() {
            if tagged.iter().any(|x| *x != 0) {
                return Err(Reject::Auth);
            }
        } else if !keys.iter().any(|k| {
            let mut m = HmacSha256::new_from_slice(k).expect("any length");
            m.update(&b[..BODY]);
            m.verify_slice(tagged).is_ok()
        }) {
            return Err(Reject::Auth);
        }
        let state = State::from_u8(b[5]).ok_or(Reject::Invalid)?;
        if b[6] & 0xf0 != 0
            || b[45] > 2
            || b[46..48].iter().any(|x| *x != 0)
            || b[72..BODY].iter().any(|x| *x != 0)
        {
            return Err(Reject::Invalid);
        }
        let u32_at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let node_id = u32_at(12);
        if node_id == 0 {
            return Err(Reject::Invalid);
        }
        Ok(Self {
            view: PeerView {
                state,
                priority: b[7],
                node_id,
                healthy: b[6] & 1 != 0,
                released: b[6] & 2 != 0,
                acquire: b[6] & 4 != 0,
                force: b[6] & 8 != 0,
                hot: b[45] == 2,
                term: u64_at(64),
            },
            group: u32_at(8),
            incarnation: u64_at(16),
            seq: u64_at(24),
            echo_incarnation: u64_at(48),
            echo_seq: u64_at(32),
            echo_hold_us: u32_at(40),
            path: b[44],
            sync: b[45],
            sessions: u64_at(56),
        })
    }
}

/// One path's liveness statistics, as `tandemstat peer` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    pub sent: u64,
    /// Heartbeats whose sendto(2) failed (no route, link down).
    pub send_errors: u64,
    pub received: u64,
    /// Heartbeats the peer sent that never arrived (sequence gaps).
    pub missed: u64,
    /// Datagrams refused: malformed, wrong key, wrong group, stale.
    pub rejected: u64,
    /// Heartbeats of a new incarnation held until they echo a recent one
    /// of this node's (a restarted peer's first few, or recordings played
    /// back).
    pub unproven: u64,
    /// Datagrams from the peer's address whose tag did not verify (also
    /// counted as rejected): the two nodes' keys differ, or a forgery.
    pub auth_failed: u64,
    /// Echoes that measured a round trip.
    pub acked: u64,
    /// Times the path went silent for the dead interval.
    pub down_count: u64,
    /// Round trip: last, smoothed and its mean deviation (RFC 6298 style),
    /// and the worst seen, in microseconds.
    pub rtt_us: u64,
    pub srtt_us: u64,
    pub rttvar_us: u64,
    pub worst_us: u64,
}

/// Send times of recent heartbeats, to match echoes against.
const SENT_RING: usize = 64;

/// Datagrams read per path and turn: a flood cannot keep the driver from
/// sending its own heartbeats.
pub const RECV_BUDGET: usize = 64;

/// Who this node is, as its heartbeats' receivers need it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Heartbeat keys ([`derive_key`]): the first signs, any verifies;
    /// none: untagged (`insecure`).
    pub keys: Vec<[u8; 32]>,
    pub group: u32,
    pub node_id: u32,
    /// This run's random incarnation.
    pub incarnation: u64,
    /// How recent an echoed heartbeat must be to prove a new incarnation
    /// (the dead interval).
    pub fresh: Duration,
}

/// A heartbeat this node sent: its seq, when, and whether its echo has
/// measured a round trip.
#[derive(Clone, Copy, Debug)]
struct Sent {
    seq: u64,
    at: Option<Instant>,
    sampled: bool,
}

/// One heartbeat path: a UDP socket on a local address and the peer's
/// address on the same link.
pub struct Path {
    pub name: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    sock: UdpSocket,
    pub stats: PathStats,
    sent: [Sent; SENT_RING],
    /// The peer's accepted incarnation and seq, and when it arrived.
    last: Option<(u64, u64, Instant)>,
    /// The last authenticated heartbeat heard, accepted or not: what the
    /// next one sent echoes.
    heard: Option<(u64, u64, Instant)>,
    /// Heard within the dead interval.
    pub alive: bool,
    /// When a datagram from the peer's address last failed authentication.
    auth_failed_at: Option<Instant>,
}

impl Path {
    /// Binds `local` (an address of this node) for the path to `peer`,
    /// and to interface `device` if given (SO_BINDTODEVICE: a datagram
    /// for `local` that arrives on another interface never reaches it).
    pub fn bind(
        name: &str,
        local: SocketAddr,
        peer: SocketAddr,
        device: Option<&str>,
    ) -> io::Result<Self> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(local),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if let Some(dev) = device {
            sock.bind_device(Some(dev.as_bytes()))?;
        }
        sock.bind(&local.into())?;
        let sock: UdpSocket = sock.into();
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        Ok(Self {
            name: name.to_owned(),
            local,
            peer,
            sock,
            stats: PathStats::default(),
            sent: [Sent {
                seq: 0,
                at: None,
                sampled: false,
            }; SENT_RING],
            last: None,
            heard: None,
            alive: false,
            auth_failed_at: None,
        })
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Sends `hb` (its echo fields filled in here) to the peer.
    pub fn send(&mut self, mut hb: Heartbeat, key: Option<&[u8; 32]>, now: Instant) {
        if let Some((inc, seq, at)) = self.heard {
            hb.echo_incarnation = inc;
            hb.echo_seq = seq;
            hb.echo_hold_us = u32::try_from(now.duration_since(at).as_micros()).unwrap_or(u32::MAX);
        }
        self.sent[(hb.seq % SENT_RING as u64) as usize] = Sent {
            seq: hb.seq,
            at: Some(now),
            sampled: false,
        };
        match self.sock.send_to(&hb.encode(key), self.peer) {
            Ok(_) => self.stats.sent += 1,
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// Reads the waiting datagrams, at most [`RECV_BUDGET`]; returns the
    /// accepted heartbeats, and whether datagrams may be left.
    pub fn recv(&mut self, me: &Identity, now: Instant, out: &mut Vec<Heartbeat>) -> bool {
        let mut buf = [0u8; LEN + 1];
        for _ in 0..RECV_BUDGET {
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            if from.ip() != self.peer.ip() {
                self.stats.rejected += 1;
                continue;
            }
            match self.accept(&buf[..n], me, now) {
                Ok(hb) => out.push(hb),
                Err(Reject::Unproven) => self.stats.unproven += 1,
                Err(Reject::Auth) => {
                    self.stats.rejected += 1;
                    self.stats.auth_failed += 1;
                    self.auth_failed_at = Some(now);
                }
                Err(_) => self.stats.rejected += 1,
            }
        }
        true
    }

    fn accept(&mut self, b: &[u8], me: &Identity, now: Instant) -> Result<Heartbeat, Reject> {
        let hb = Heartbeat::decode(b, &me.keys)?;
        if hb.group != me.group {
            return Err(Reject::Group);
        }
        if hb.view.node_id == me.node_id {
            return Err(Reject::OwnId);
        }
        match self.last {
            Some((inc, seq, _)) if inc == hb.incarnation => {
                if hb.seq <= seq {
                    return Err(Reject::Stale);
                }
                self.stats.missed += hb.seq - seq - 1;
            }
            _ => {
                if self
                    .heard
                    .is_some_and(|(inc, seq, _)| inc == hb.incarnation && hb.seq <= seq)
                {
                    return Err(Reject::Stale);
                }
                self.heard = Some((hb.incarnation, hb.seq, now));
                if !self.proves(&hb, me, now) {
                    return Err(Reject::Unproven);
                }
            }
        }
        self.heard = Some((hb.incarnation, hb.seq, now));
        self.last = Some((hb.incarnation, hb.seq, now));
        self.stats.received += 1;
        self.alive = true;
        let i = (hb.echo_seq % SENT_RING as u64) as usize;
        let slot = self.sent[i];
        if hb.echo_seq != 0
            && hb.echo_incarnation == me.incarnation
            && slot.seq == hb.echo_seq
            && !slot.sampled
            && let Some(at) = slot.at
        {
            let rtt = now
                .duration_since(at)
                .saturating_sub(Duration::from_micros(hb.echo_hold_us.into()));
            self.sent[i].sampled = true;
            self.sample(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
        }
        Ok(hb)
    }

    /// Whether `hb` echoes a heartbeat this node sent on this path within
    /// `me.fresh`.
    fn proves(&self, hb: &Heartbeat, me: &Identity, now: Instant) -> bool {
        let slot = self.sent[(hb.echo_seq % SENT_RING as u64) as usize];
        hb.echo_seq != 0
            && hb.echo_incarnation == me.incarnation
            && slot.seq == hb.echo_seq
            && slot
                .at
                .is_some_and(|at| now.saturating_duration_since(at) <= me.fresh)
    }

    /// Whether a datagram from the peer's address failed authentication
    /// within `window` of `now`: the nodes' keys differ (an alarm; each
    /// may believe the other dead).
    pub fn key_mismatch(&self, now: Instant, window: Duration) -> bool {
        self.auth_failed_at
            .is_some_and(|at| now.saturating_duration_since(at) <= window)
    }

    /// A heartbeat of a new incarnation is waiting for its proof: the
    /// peer needs this node's echo soon.
    pub fn unproven_waiting(&self) -> bool {
        match (self.heard, self.last) {
            (Some((h, _, _)), Some((l, _, _))) => h != l,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn sample(&mut self, rtt: u64) {
        let s = &mut self.stats;
        if s.acked == 0 {
            s.srtt_us = rtt;
            s.rttvar_us = rtt / 2;
        } else {
            s.rttvar_us = (3 * s.rttvar_us + s.srtt_us.abs_diff(rtt)) / 4;
            s.srtt_us = (7 * s.srtt_us + rtt) / 8;
        }
        s.acked += 1;
        s.rtt_us = rtt;
        s.worst_us = s.worst_us.max(rtt);
    }

    /// When the peer was last heard on this path.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last.map(|(_, _, at)| at)
    }

    /// Marks the path down when silent for `dead`; true when it just went.
    pub fn check(&mut self, now: Instant, dead: Duration) -> bool {
        let silent = self
            .last_heard()
            .is_none_or(|at| now.duration_since(at) >= dead);
        if self.alive && silent {
            self.alive = false;
            self.stats.down_count += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests;
