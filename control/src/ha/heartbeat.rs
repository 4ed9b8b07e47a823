//! Heartbeats: one UDP datagram per path every keepalive interval (and at
//! once when the state machine announces a change), carrying the sender's
//! [`PeerView`] and echoing the last heartbeat it heard on that path, so
//! each side measures the round trip the way DPD's R-U-THERE/ACK does.
//!
//! Format (96 bytes, big-endian):
//! ```text
//!  0 "TNDH"  4 version  5 state  6 flags  7 priority
//!  8 group (u32)  12 node id (u32)  16 incarnation (u64)  24 seq (u64)
//! 32 echo seq (u64)  40 echo hold (u32, microseconds)  44 path (u8)
//! 45 sync state (u8)  46..64 zero  64..96 HMAC-SHA256 tag, or zeros
//! ```
//! flags: 1 healthy, 2 released, 4 acquire, 8 force. The incarnation is
//! the sender's start time (ns): with the sequence it orders heartbeats,
//! so a replayed or late one is refused and a restarted peer's first one
//! is not. With a key, the tag is HMAC-SHA256 under a key derived from the
//! pair's shared secret for heartbeats only; without one the tag is zero
//! and a tagged heartbeat is refused (the two nodes disagree on the key).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::fsm::{PeerView, State};

pub const LEN: usize = 96;
const BODY: usize = 64;
const MAGIC: &[u8; 4] = b"TNDH";
const VERSION: u8 = 1;
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
    /// The last seq heard from the peer on this path (0: none yet) and
    /// how long ago, in microseconds.
    pub echo_seq: u64,
    pub echo_hold_us: u32,
    /// The sender's index of the path.
    pub path: u8,
    /// The sender's sync state: 0 off, 1 cold, 2 hot.
    pub sync: u8,
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("not a heartbeat (length or magic)")]
    Malformed,
    #[error("heartbeat version {0} (this node speaks 1)")]
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
        if let Some(k) = key {
            let t = tag(k, &b[..BODY]);
            b[BODY..].copy_from_slice(&t);
        }
        b
    }

    /// Checks shape and tag; the caller checks group, id and order.
    pub fn decode(b: &[u8], key: Option<&[u8; 32]>) -> Result<Self, Reject> {
        if b.len() != LEN || &b[..4] != MAGIC {
            return Err(Reject::Malformed);
        }
        if b[4] != VERSION {
            return Err(Reject::Version(b[4]));
        }
        let tagged = &b[BODY..];
        match key {
            Some(k) => {
                let mut m = HmacSha256::new_from_slice(k).expect("any length");
                m.update(&b[..BODY]);
                m.verify_slice(tagged).map_err(|_| Reject::Auth)?;
            }
            None if tagged.iter().any(|x| *x != 0) => return Err(Reject::Auth),
            None => {}
        }
        let state = State::from_u8(b[5]).ok_or(Reject::Invalid)?;
        if b[6] & 0xf0 != 0 || b[45] > 2 || b[46..BODY].iter().any(|x| *x != 0) {
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
            },
            group: u32_at(8),
            incarnation: u64_at(16),
            seq: u64_at(24),
            echo_seq: u64_at(32),
            echo_hold_us: u32_at(40),
            path: b[44],
            sync: b[45],
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

/// One heartbeat path: a UDP socket on a local address and the peer's
/// address on the same link.
pub struct Path {
    pub name: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    sock: UdpSocket,
    pub stats: PathStats,
    sent_at: [(u64, Option<Instant>); SENT_RING],
    /// The peer's last accepted (incarnation, seq) and when it arrived.
    last: Option<(u64, u64, Instant)>,
    /// Heard within the dead interval.
    pub alive: bool,
}

impl Path {
    /// Binds `local` (an address of this node) for the path to `peer`.
    pub fn bind(name: &str, local: SocketAddr, peer: SocketAddr) -> io::Result<Self> {
        let sock = UdpSocket::bind(local)?;
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        Ok(Self {
            name: name.to_owned(),
            local,
            peer,
            sock,
            stats: PathStats::default(),
            sent_at: [(0, None); SENT_RING],
            last: None,
            alive: false,
        })
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Sends `hb` (its echo fields filled in here) to the peer.
    pub fn send(&mut self, mut hb: Heartbeat, key: Option<&[u8; 32]>, now: Instant) {
        if let Some((_, seq, at)) = self.last {
            hb.echo_seq = seq;
            hb.echo_hold_us = u32::try_from(now.duration_since(at).as_micros()).unwrap_or(u32::MAX);
        }
        self.sent_at[(hb.seq % SENT_RING as u64) as usize] = (hb.seq, Some(now));
        match self.sock.send_to(&hb.encode(key), self.peer) {
            Ok(_) => self.stats.sent += 1,
            Err(_) => self.stats.send_errors += 1,
        }
    }

    /// Reads every waiting datagram; returns the accepted heartbeats.
    pub fn recv(
        &mut self,
        key: Option<&[u8; 32]>,
        group: u32,
        own_id: u32,
        now: Instant,
        out: &mut Vec<Heartbeat>,
    ) {
        let mut buf = [0u8; LEN + 1];
        loop {
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if from.ip() != self.peer.ip() {
                self.stats.rejected += 1;
                continue;
            }
            match self.accept(&buf[..n], key, group, own_id, now) {
                Ok(hb) => out.push(hb),
                Err(_) => self.stats.rejected += 1,
            }
        }
    }

    fn accept(
        &mut self,
        b: &[u8],
        key: Option<&[u8; 32]>,
        group: u32,
        own_id: u32,
        now: Instant,
    ) -> Result<Heartbeat, Reject> {
        let hb = Heartbeat::decode(b, key)?;
        if hb.group != group {
            return Err(Reject::Group);
        }
        if hb.view.node_id == own_id {
            return Err(Reject::OwnId);
        }
        if let Some((inc, seq, _)) = self.last {
            if (hb.incarnation, hb.seq) <= (inc, seq) {
                return Err(Reject::Stale);
            }
            if hb.incarnation == inc {
                self.stats.missed += hb.seq - seq - 1;
            }
        }
        self.last = Some((hb.incarnation, hb.seq, now));
        self.stats.received += 1;
        self.alive = true;
        let slot = self.sent_at[(hb.echo_seq % SENT_RING as u64) as usize];
        if hb.echo_seq != 0
            && slot.0 == hb.echo_seq
            && let Some(at) = slot.1
        {
            let rtt = now
                .duration_since(at)
                .saturating_sub(Duration::from_micros(hb.echo_hold_us.into()));
            self.sent_at[(hb.echo_seq % SENT_RING as u64) as usize].1 = None;
            self.sample(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
        }
        Ok(hb)
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
