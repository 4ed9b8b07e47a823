//! Transmission: decided frames out of their egress socket with one
//! wakeup per kernel batch, and datagrams punted to the kernel.

use std::net::{Ipv4Addr, Ipv6Addr};

use xsk_rs::FrameDesc;

use super::Worker;
use crate::{
    counters::{IfaceCounter, Tally, WorkerCounter},
    forward::DropReason,
    sys::PuntSocket,
};

/// Frames the kernel transmits per sendto() in copy mode.
const COPY_TX_BATCH: usize = 32;

impl Worker {
    /// Puts `frames` on port `port`'s tx ring (what does not fit is
    /// dropped and counted) and wakes the kernel.
    pub(super) fn transmit(&mut self, port: usize, frames: &mut Vec<FrameDesc>, tally: &mut Tally) {
        let p = &mut self.ports[port];
        let room = p.tx.nb_free(frames.len() as u32) as usize;
        let n = room.min(frames.len());
        let sent = if n > 0 {
            // SAFETY: the frames belong to this UMEM and are on no ring.
            unsafe { p.tx.produce(&frames[..n]) }
        } else {
            0
        };
        let mut bytes = 0u64;
        for d in &frames[..sent] {
            bytes += d.lengths().data() as u64;
        }
        tally.add(WorkerCounter::TxPackets, sent as u64);
        tally.add(WorkerCounter::TxBytes, bytes);
        tally.iface(p.slot, IfaceCounter::TxPackets, sent as u64);
        tally.iface(p.slot, IfaceCounter::TxBytes, bytes);
        for d in &frames[sent..] {
            tally.drop(p.slot, DropReason::TxRingFull);
            self.free.push(*d);
        }
        frames.clear();
        if sent > 0 && p.tx.needs_wakeup() {
            // Copy mode sends at most 32 frames per wakeup (the kernel's
            // TX_BATCH_SIZE): kick once per 32 so nothing waits a lap.
            for _ in 0..sent.div_ceil(COPY_TX_BATCH) {
                tally.add(WorkerCounter::TxWakeups, 1);
                if let Err(e) = p.tx.wakeup() {
                    tracing::debug!(worker = self.id, error = %e, "tx wakeup failed");
                    break;
                }
            }
        }
    }
}

/// Hands a datagram (IP header first) to the kernel, which routes it and
/// resolves its next hop.
pub(super) fn punt(sock: &PuntSocket, datagram: &[u8], v6: bool, tally: &mut Tally) {
    let r = if v6 {
        let mut d = [0u8; 16];
        d.copy_from_slice(&datagram[24..40]);
        sock.send_v6(datagram, Ipv6Addr::from(d))
    } else {
        sock.send_v4(
            datagram,
            Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]),
        )
    };
    match r {
        Ok(()) => tally.add(WorkerCounter::Punted, 1),
        Err(_) => tally.add(WorkerCounter::PuntErrors, 1),
    }
}
