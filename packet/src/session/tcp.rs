//! TCP connection state as a middlebox sees it, from the flags alone.
//!
//! Design: the states are RFC 793's, named from the initiator's side, except
//! CLOSE-WAIT and LAST-ACK, which name the responder's (the responder closed
//! first). Sequence numbers are not checked: this tracks the connection's
//! phase to pick its timeout and to close it, it does not police windows.

use std::fmt;

use crate::wire::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Which side sent a segment: the flow's initiator or its responder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Initiator,
    Responder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum TcpState {
    /// Reset seen: the session is about to go.
    #[default]
    Closed = 0,
    SynSent = 1,
    SynReceived = 2,
    Established = 3,
    /// The initiator sent FIN.
    FinWait1 = 4,
    /// The responder acknowledged the initiator's FIN.
    FinWait2 = 5,
    /// The responder sent FIN first.
    CloseWait = 6,
    /// Both sent FIN, initiator first; the initiator's last ACK is due.
    Closing = 7,
    /// Both sent FIN, responder first; the responder's last ACK is due.
    LastAck = 8,
    TimeWait = 9,
}

impl TcpState {
    pub const ALL: [Self; 10] = [
        Self::Closed,
        Self::SynSent,
        Self::SynReceived,
        Self::Established,
        Self::FinWait1,
        Self::FinWait2,
        Self::CloseWait,
        Self::Closing,
        Self::LastAck,
        Self::TimeWait,
    ];

    /// The state after a segment with `flags` from `side`. Only a SYN
    /// without ACK may open a connection; anything else on a closed one
    /// leaves it closed.
    #[must_use]
    pub fn next(self, side: Side, flags: u8) -> Self {
        use Side::{Initiator as I, Responder as R};
        use TcpState::{
            CloseWait, Closed, Closing, Established, FinWait1, FinWait2, LastAck, SynReceived,
            SynSent, TimeWait,
        };
        if flags & TCP_RST != 0 {
            return Closed;
        }
        let syn = flags & TCP_SYN != 0;
        let fin = flags & TCP_FIN != 0;
        let ack = flags & TCP_ACK != 0;
        match (self, side) {
            // A fresh SYN from the initiator reopens a finished connection
            // on the same ports.
            (Closed | TimeWait, I) if syn && !ack => SynSent,
            (SynSent, R) if syn && ack => SynReceived,
            (SynReceived, I) if ack && !syn => {
                if fin {
                    FinWait1
                } else {
                    Established
                }
            }
            (Established, I) if fin => FinWait1,
            (Established, R) if fin => CloseWait,
            (FinWait1 | FinWait2, R) if fin => Closing,
            (FinWait1, R) if ack => FinWait2,
            (CloseWait, I) if fin => LastAck,
            (Closing, I) | (LastAck, R) if ack => TimeWait,
            (s, _) => s,
        }
    }

    /// Whether the handshake completed.
    pub fn is_established(self) -> bool {
        !matches!(self, Self::Closed | Self::SynSent | Self::SynReceived)
    }

    pub fn from_u8(v: u8) -> Self {
        Self::ALL.get(usize::from(v)).copied().unwrap_or_default()
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "CLOSED",
            Self::SynSent => "SYN-SENT",
            Self::SynReceived => "SYN-RECEIVED",
            Self::Established => "ESTABLISHED",
            Self::FinWait1 => "FIN-WAIT-1",
            Self::FinWait2 => "FIN-WAIT-2",
            Self::CloseWait => "CLOSE-WAIT",
            Self::Closing => "CLOSING",
            Self::LastAck => "LAST-ACK",
            Self::TimeWait => "TIME-WAIT",
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Side::*, TcpState::*, *};

    const SYN: u8 = TCP_SYN;
    const SYNACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FINACK: u8 = TCP_FIN | TCP_ACK;
    const RST: u8 = TCP_RST;

    fn run(steps: &[(Side, u8)]) -> Vec<TcpState> {
        let mut s = Closed;
        steps
            .iter()
            .map(|&(side, f)| {
                s = s.next(side, f);
                s
            })
            .collect()
    }

    #[test]
    fn handshake_and_initiator_close() {
        assert_eq!(
            run(&[
                (Initiator, SYN),
                (Responder, SYNACK),
                (Initiator, ACK),
                (Initiator, ACK),
                (Initiator, FINACK),
                (Responder, ACK),
                (Responder, FINACK),
                (Initiator, ACK),
            ]),
            [
                SynSent,
                SynReceived,
                Established,
                Established,
                FinWait1,
                FinWait2,
                Closing,
                TimeWait
            ]
        );
    }

    #[test]
    fn responder_closes_first() {
        let s = run(&[
            (Initiator, SYN),
            (Responder, SYNACK),
            (Initiator, ACK),
            (Responder, FINACK),
            (Initiator, FINACK),
            (Responder, ACK),
        ]);
        assert_eq!(&s[3..], [CloseWait, LastAck, TimeWait]);
    }

    #[test]
    fn rst_closes_from_any_state() {
        for st in TcpState::ALL {
            assert_eq!(st.next(Responder, RST), Closed);
            assert_eq!(st.next(Initiator, RST | ACK), Closed);
        }
    }

    #[test]
    fn only_a_syn_opens() {
        for f in [ACK, FINACK, SYNACK, 0] {
            assert_eq!(Closed.next(Initiator, f), Closed);
        }
        assert_eq!(Closed.next(Responder, SYN), Closed);
        assert_eq!(TimeWait.next(Initiator, SYN), SynSent);
    }

    #[test]
    fn display_uses_rfc_spelling() {
        assert_eq!(SynSent.to_string(), "SYN-SENT");
        assert_eq!(FinWait2.to_string(), "FIN-WAIT-2");
        assert_eq!(TimeWait.to_string(), "TIME-WAIT");
    }

    proptest! {
        /// Whatever arrives, the state stays a valid state, and a
        /// connection never returns to a pre-handshake state without a
        /// reset or a fresh SYN.
        #[test]
        fn random_segments_stay_sane(steps in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..40)) {
            let mut s = Closed;
            for (init, flags) in steps {
                let side = if init { Initiator } else { Responder };
                let n = s.next(side, flags);
                prop_assert_eq!(TcpState::from_u8(n as u8), n);
                if s.is_established() && !n.is_established() {
                    prop_assert!(n == Closed || (flags & TCP_SYN != 0 && n == SynSent));
                }
                s = n;
            }
        }
    }
}
