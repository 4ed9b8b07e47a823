//! Every worker's UMEM and AF_XDP sockets, bound before XDP is attached.
#![expect(
    unsafe_code,
    reason = "binding an AF_XDP socket to a shared UMEM is unsafe in xsk-rs"
)]

use std::num::NonZeroU32;

use tandem_control::config::{BindMode, Config};
use xsk_rs::{
    FrameDesc, Socket, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
};

use super::{DaemonError, iface::Interfaces};
use crate::{worker::Port, xdp::loader::Loader};

/// One worker's UMEM, its free frames and its sockets.
pub(super) struct Bound {
    pub umem: Umem,
    pub free: Vec<FrameDesc>,
    pub ports: Vec<Port>,
}

fn queue_size(n: u32) -> QueueSize {
    // Validated as a power of two by the config loader.
    QueueSize::new(n).expect("config validated ring size")
}

/// A UMEM per worker and a socket per (interface, queue) it serves (queue
/// q belongs to worker q % workers), each registered in the program's
/// socket map.
pub(super) fn bind_all(
    cfg: &Config,
    ifaces: &Interfaces,
    loader: &mut Loader,
) -> Result<Vec<Bound>, DaemonError> {
    let d = &cfg.dataplane;
    let umem_cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(d.frame_size).expect("validated frame size"))
        .fill_queue_size(queue_size(d.fill_ring))
        .comp_queue_size(queue_size(d.comp_ring))
        .build()
        .map_err(DaemonError::UmemConfig)?;
    let bind = match d.bind {
        BindMode::Auto => BindFlags::XDP_USE_NEED_WAKEUP,
        BindMode::Copy => BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_COPY,
        BindMode::Zerocopy => BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_ZEROCOPY,
    };
    let sock_cfg = SocketConfig::builder()
        .rx_queue_size(queue_size(d.rx_ring))
        .tx_queue_size(queue_size(d.tx_ring))
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(bind)
        .build();
    let mut bound = Vec::new();
    for w in 0..ifaces.worker_count() {
        let (umem, free) = Umem::new(
            umem_cfg,
            NonZeroU32::new(d.frames_per_worker).expect("validated frame count"),
            false,
        )
        .map_err(|source| DaemonError::Umem { worker: w, source })?;
        let mut ports = Vec::new();
        for (slot, (name, q)) in ifaces.names.iter().zip(&ifaces.queues).enumerate() {
            for queue in (w as u32..*q).step_by(ifaces.worker_count()) {
                let port = bind_port(&umem, sock_cfg, name, slot, ifaces.indexes[slot], queue)?;
                loader.set_xsk(slot as u32, queue, port.rx.fd())?;
                ports.push(port);
            }
        }
        bound.push(Bound { umem, free, ports });
    }
    Ok(bound)
}

fn bind_port(
    umem: &Umem,
    cfg: SocketConfig,
    name: &str,
    slot: usize,
    ifindex: u32,
    queue: u32,
) -> Result<Port, DaemonError> {
    let sock_err = |source: Box<dyn std::error::Error + Send + Sync>| DaemonError::Socket {
        iface: name.to_owned(),
        queue,
        source,
    };
    let iface: Interface = name.parse().map_err(|e| sock_err(Box::new(e)))?;
    // SAFETY: each (interface, queue) pair is bound once, by this call, and
    // INHIBIT_PROG_LOAD is set, as sharing a UMEM requires.
    let (tx, rx, rings) =
        unsafe { Socket::new(cfg, umem, &iface, queue) }.map_err(|e| sock_err(Box::new(e)))?;
    let (fq, cq) = rings.ok_or_else(|| sock_err("no fill/completion rings returned".into()))?;
    Ok(Port {
        slot,
        ifindex,
        queue,
        tx,
        rx,
        fq,
        cq,
    })
}
