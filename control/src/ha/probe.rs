//! Probe-based failure detection, in the manner of in.mpathd: ICMP echo
//! requests from an interface's test address to configured targets, in
//! turn, `FDT / 5` apart. A probe unanswered when the next one is due is
//! lost; [`LOST_TO_FAIL`] lost in a row fail the interface (so a failure is
//! seen within the failure detection time), [`ANSWERED_TO_REPAIR`]
//! answered in a row repair it. Round trips are kept per target as a
//! smoothed average and deviation (RFC 6298's estimator).
//!
//! Pure: the driver owns the socket, asks [`Prober::next`] what to send
//! when [`Prober::due`], and hands replies to [`Prober::answered`]. The
//! wire format is [`echo_request`] and [`parse_reply`].

use std::{net::Ipv4Addr, time::Duration};

/// Lost probes in a row that fail the interface.
pub const LOST_TO_FAIL: u32 = 5;
/// Answered probes in a row that repair a failed interface.
pub const ANSWERED_TO_REPAIR: u32 = 10;
/// ICMP echo request payload: the send time (unix ns), for a reader of a
/// capture.
const PAYLOAD: usize = 8;
/// Length of a probe's ICMP message.
pub const ECHO_LEN: usize = 8 + PAYLOAD;

/// What probing says of an interface (ipmpstat's PROBE field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeState {
    /// No answer and no failure yet (just started).
    Unknown = 0,
    Ok = 1,
    Failed = 2,
    /// No test address: probes cannot be sent.
    Disabled = 3,
}

impl ProbeState {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }

    pub fn from_u64(v: u64) -> Self {
        match v {
            1 => Self::Ok,
            2 => Self::Failed,
            3 => Self::Disabled,
            _ => Self::Unknown,
        }
    }
}

/// A change the state machine must hear (`Check::Probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Failed,
    Repaired,
}

/// One target's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: Ipv4Addr,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    /// Smoothed round trip and its deviation (µs), once answered.
    pub srtt_us: Option<u64>,
    pub rttvar_us: Option<u64>,
}

/// A finished probe as the control socket sends it (`show probes`): one
/// JSON line each.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeRow {
    /// Position in the daemon's log of finished probes.
    pub id: u64,
    pub interface: String,
    /// The ICMP sequence number.
    pub probe: u16,
    pub target: Ipv4Addr,
    pub sent_ns: u64,
    pub net_rtt_us: Option<u64>,
    pub rtt_us: Option<u64>,
    pub rtt_avg_us: Option<u64>,
    pub rtt_dev_us: Option<u64>,
}

impl ProbeRow {
    pub fn new(id: u64, interface: &str, r: &Record) -> Self {
        Self {
            id,
            interface: interface.to_owned(),
            probe: r.seq,
            target: r.target,
            sent_ns: r.sent_ns,
            net_rtt_us: r.net_rtt_us,
            rtt_us: r.rtt_us,
            rtt_avg_us: r.avg_us,
            rtt_dev_us: r.dev_us,
        }
    }
}

/// A finished probe (answered or lost), as `ipmpstat -p` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The ICMP sequence number: 0, 1, ... per interface.
    pub seq: u16,
    pub target: Ipv4Addr,
    /// When it was sent (unix ns).
    pub sent_ns: u64,
    /// Kernel receive time minus send time (µs); `None` if lost.
    pub net_rtt_us: Option<u64>,
    /// Send call to reply processed (µs); `None` if lost.
    pub rtt_us: Option<u64>,
    pub avg_us: Option<u64>,
    pub dev_us: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    seq: u16,
    target: usize,
    at: Duration,
    sent_ns: u64,
}

/// Probing of one interface.
#[derive(Clone, Debug)]
pub struct Prober {
    /// ICMP identifier of this prober's echoes.
    pub ident: u16,
    pub targets: Vec<Target>,
    pub interval: Duration,
    next_target: usize,
    seq: u16,
    next_at: Duration,
    outstanding: Option<Outstanding>,
    lost_run: u32,
    answered_run: u32,
    state: ProbeState,
}

impl Prober {
    /// Probes `targets` in turn so that a failure shows within `fdt`.
    pub fn new(ident: u16, targets: &[Ipv4Addr], fdt: Duration) -> Self {
        Self {
            ident,
            targets: targets
                .iter()
                .map(|&address| Target {
                    address,
                    sent: 0,
                    answered: 0,
                    lost: 0,
                    srtt_us: None,
                    rttvar_us: None,
                })
                .collect(),
            interval: fdt / LOST_TO_FAIL,
            next_target: 0,
            seq: 0,
            next_at: Duration::ZERO,
            outstanding: None,
            lost_run: 0,
            answered_run: 0,
            state: ProbeState::Unknown,
        }
    }

    /// A new failure detection time (a reload): the next probe goes out
    /// at the new interval.
    pub fn set_fdt(&mut self, fdt: Duration) {
        let interval = fdt / LOST_TO_FAIL;
        self.next_at = self.next_at.saturating_sub(self.interval) + interval;
        self.interval = interval;
    }

    pub fn state(&self) -> ProbeState {
        self.state
    }

    /// When the next probe is due (since the driver's epoch).
    pub fn due_at(&self) -> Duration {
        self.next_at
    }

    pub fn due(&self, now: Duration) -> bool {
        !self.targets.is_empty() && now >= self.next_at
    }

    /// The probe to send now: (sequence, target). The one before it, if
    /// still unanswered, is lost: its record and any change come back too.
    pub fn next(
        &mut self,
        now: Duration,
        unix_ns: u64,
    ) -> (u16, Ipv4Addr, Option<Record>, Option<Change>) {
        let (lost, change) = self.expire();
        let t = self.next_target % self.targets.len();
        self.next_target = t + 1;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.targets[t].sent += 1;
        self.outstanding = Some(Outstanding {
            seq,
            target: t,
            at: now,
            sent_ns: unix_ns,
        });
        // Keep the cadence even if the driver is late.
        self.next_at = (self.next_at + self.interval).max(now + self.interval / 2);
        (seq, self.targets[t].address, lost, change)
    }

    fn expire(&mut self) -> (Option<Record>, Option<Change>) {
        let Some(o) = self.outstanding.take() else {
            return (None, None);
        };
        let t = &mut self.targets[o.target];
        t.lost += 1;
        self.answered_run = 0;
        self.lost_run = self.lost_run.saturating_add(1);
        let change =
            (self.lost_run >= LOST_TO_FAIL && self.state != ProbeState::Failed).then(|| {
                self.state = ProbeState::Failed;
                Change::Failed
            });
        let rec = Record {
            seq: o.seq,
            target: t.address,
            sent_ns: o.sent_ns,
            net_rtt_us: None,
            rtt_us: None,
            avg_us: t.srtt_us,
            dev_us: t.rttvar_us,
        };
        (Some(rec), change)
    }

    /// An echo reply from `from` with `seq`, processed at `now`, that the
    /// kernel received at `rx_ns` (unix ns; 0 if unknown). Replies that
    /// match no outstanding probe (late, duplicated, another target's)
    /// are `None`.
    pub fn answered(
        &mut self,
        now: Duration,
        from: Ipv4Addr,
        seq: u16,
        rx_ns: u64,
    ) -> Option<(Record, Option<Change>)> {
        let o = self.outstanding?;
        let t = &mut self.targets[o.target];
        if o.seq != seq || t.address != from {
            return None;
        }
        self.outstanding = None;
        t.answered += 1;
        let rtt = u64::try_from(now.saturating_sub(o.at).as_micros()).unwrap_or(u64::MAX);
        // RFC 6298: the first sample sets the average and half of it the
        // deviation; then 1/8 and 1/4 gains.
        if let (Some(s), Some(v)) = (t.srtt_us, t.rttvar_us) {
            let err = s.abs_diff(rtt);
            t.rttvar_us = Some((3 * v + err) / 4);
            t.srtt_us = Some((7 * s + rtt) / 8);
        } else {
            t.srtt_us = Some(rtt);
            t.rttvar_us = Some(rtt / 2);
        }
        let net = (rx_ns >= o.sent_ns && rx_ns != 0).then(|| (rx_ns - o.sent_ns) / 1000);
        self.lost_run = 0;
        self.answered_run = self.answered_run.saturating_add(1);
        let change = match self.state {
            ProbeState::Failed if self.answered_run >= ANSWERED_TO_REPAIR => {
                self.state = ProbeState::Ok;
                Some(Change::Repaired)
            }
            ProbeState::Unknown | ProbeState::Disabled => {
                self.state = ProbeState::Ok;
                None
            }
            _ => None,
        };
        let rec = Record {
            seq: o.seq,
            target: t.address,
            sent_ns: o.sent_ns,
            net_rtt_us: net.or(Some(rtt)),
            rtt_us: Some(rtt),
            avg_us: t.srtt_us,
            dev_us: t.rttvar_us,
        };
        Some((rec, change))
    }
}

/// An ICMP echo request (checksummed) carrying `unix_ns`.
pub fn echo_request(ident: u16, seq: u16, unix_ns: u64) -> [u8; ECHO_LEN] {
    let mut m = [0u8; ECHO_LEN];
    m[0] = 8;
    m[4..6].copy_from_slice(&ident.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..].copy_from_slice(&unix_ns.to_be_bytes());
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The Internet checksum of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// An echo reply as a raw IPv4 socket hands it over (IP header first):
/// (source, identifier, sequence). Anything else (another ICMP type, a
/// short or corrupt packet, a bad checksum) is `None`.
pub fn parse_reply(pkt: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let v_ihl = *pkt.first()?;
    let ihl = usize::from(v_ihl & 0x0f) * 4;
    if v_ihl >> 4 != 4 || ihl < 20 || pkt.len() < ihl + 8 || pkt[9] != 1 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let end = total.clamp(ihl + 8, pkt.len());
    let icmp = &pkt[ihl..end];
    if icmp[0] != 0 || icmp[1] != 0 || checksum(icmp) != 0 {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    Some((
        src,
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const T2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An IPv4 packet around an ICMP message.
    fn ip(src: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        let len = u16::try_from(20 + icmp.len()).unwrap();
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p.extend(src.octets());
        p.extend([198, 18, 1, 2]);
        p.extend(icmp);
        p
    }

    fn reply_to(req: &[u8]) -> Vec<u8> {
        let mut r = req.to_vec();
        r[0] = 0;
        r[2..4].fill(0);
        let c = checksum(&r);
        r[2..4].copy_from_slice(&c.to_be_bytes());
        r
    }

    #[test]
    fn an_echo_round_trips_through_the_parser() {
        let req = echo_request(0x1234, 7, 42);
        assert_eq!(checksum(&req), 0);
        let p = ip(T1, &reply_to(&req));
        assert_eq!(parse_reply(&p), Some((T1, 0x1234, 7)));
        // The request itself, a corrupt reply, a short or non-ICMP packet.
        assert_eq!(parse_reply(&ip(T1, &req)), None);
        let mut bad = p.clone();
        bad[25] ^= 1;
        assert_eq!(parse_reply(&bad), None);
        assert_eq!(parse_reply(&p[..27]), None);
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(parse_reply(&udp), None);
        assert_eq!(parse_reply(&[]), None);
        assert_eq!(parse_reply(&[0x4f; 30]), None);
    }

    #[test]
    fn targets_take_turns_and_answers_make_it_ok_with_rtt_figures() {
        let mut p = Prober::new(1, &[T1, T2], ms(1000));
        assert_eq!(p.interval, ms(200));
        assert_eq!(p.state(), ProbeState::Unknown);
        assert!(p.due(ms(0)));
        let (seq, to, lost, ch) = p.next(ms(0), 1_000_000_000);
        assert_eq!((seq, to, lost, ch), (0, T1, None, None));
        assert!(!p.due(ms(100)));
        // A reply from the wrong target or with the wrong seq is not it.
        assert!(p.answered(ms(1), T2, 0, 0).is_none());
        assert!(p.answered(ms(1), T1, 5, 0).is_none());
        let (rec, ch) = p.answered(ms(2), T1, 0, 1_001_500_000).unwrap();
        assert_eq!(ch, None);
        assert_eq!(p.state(), ProbeState::Ok);
        assert_eq!(rec.rtt_us, Some(2000));
        assert_eq!(rec.net_rtt_us, Some(1500));
        assert_eq!((rec.avg_us, rec.dev_us), (Some(2000), Some(1000)));
        // A duplicate is ignored.
        assert!(p.answered(ms(3), T1, 0, 0).is_none());
        let (seq, to, lost, _) = p.next(ms(200), 0);
        assert_eq!((seq, to, lost), (1, T2, None));
        p.answered(ms(204), T2, 1, 0).unwrap();
        let (_, to, _, _) = p.next(ms(400), 0);
        assert_eq!(to, T1);
        let (rec, _) = p.answered(ms(401), T1, 2, 0).unwrap();
        // 7/8 of 2000 + 1000/8; deviation (3 x 1000 + 1000) / 4.
        assert_eq!((rec.avg_us, rec.dev_us), (Some(1875), Some(1000)));
        assert_eq!(p.targets[0].sent, 2);
        assert_eq!(p.targets[0].answered, 2);
    }

    #[test]
    fn five_lost_in_a_row_fail_and_ten_answered_repair() {
        let mut p = Prober::new(1, &[T1], ms(500));
        let mut now = ms(0);
        let mut changes = Vec::new();
        for i in 0..=LOST_TO_FAIL {
            let (_, _, lost, ch) = p.next(now, 0);
            assert_eq!(lost.is_some(), i > 0);
            changes.extend(ch);
            now += p.interval;
        }
        assert_eq!(changes, [Change::Failed]);
        assert_eq!(p.state(), ProbeState::Failed);
        assert_eq!(p.targets[0].lost, u64::from(LOST_TO_FAIL));
        for i in 0..ANSWERED_TO_REPAIR {
            let (seq, _, lost, _) = if i == 0 {
                // The last probe of the loop above is still out.
                (u16::try_from(LOST_TO_FAIL).unwrap(), T1, None, None)
            } else {
                p.next(now, 0)
            };
            assert!(lost.is_none());
            let (_, ch) = p.answered(now + ms(1), T1, seq, 0).unwrap();
            assert_eq!(
                ch,
                (i + 1 == ANSWERED_TO_REPAIR).then_some(Change::Repaired),
                "answer {i}"
            );
            now += p.interval;
        }
        assert_eq!(p.state(), ProbeState::Ok);
        // One loss between answers does not fail it.
        p.next(now, 0);
        let (seq, _, lost, ch) = p.next(now + p.interval, 0);
        assert!(lost.is_some() && ch.is_none());
        p.answered(now + p.interval, T1, seq, 0).unwrap();
        assert_eq!(p.state(), ProbeState::Ok);
    }

    #[test]
    fn a_late_driver_keeps_the_cadence() {
        let mut p = Prober::new(1, &[T1], ms(1000));
        p.next(ms(0), 0);
        p.next(ms(900), 0);
        assert!(p.due_at() >= ms(1000));
        assert!(p.due_at() <= ms(1100));
    }
}
