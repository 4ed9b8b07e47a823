//! Mirrors the kernel's links, addresses, routes and neighbours into a [`Fib`].
//!
//! Design: subscribe to the rtnetlink groups first, then dump, so no change
//! falls between the dump and the events; applying a message is idempotent.
//! On receive-buffer overrun (ENOBUFS) the whole state is dumped again.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    link::{LinkAttribute, LinkMessage, State},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{Fib, Mac, Route, RouteKind};

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Errors talking rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {call}: {source}")]
    Io {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink dump of {what} failed: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(call: &'static str) -> impl FnOnce(io::Error) -> NetlinkError {
    move |source| NetlinkError::Io { call, source }
}

/// Applies one rtnetlink message to `fib`. Returns true if anything changed.
pub fn apply(fib: &mut Fib, msg: &RouteNetlinkMessage) -> bool {
    match msg {
        RouteNetlinkMessage::NewLink(m) => {
            apply_link(fib, m);
            true
        }
        RouteNetlinkMessage::DelLink(m) => {
            fib.remove_link(m.header.index);
            true
        }
        RouteNetlinkMessage::NewAddress(m) => apply_address(fib, m, true),
        RouteNetlinkMessage::DelAddress(m) => apply_address(fib, m, false),
        RouteNetlinkMessage::NewNeighbour(m) => apply_neighbour(fib, m, false),
        RouteNetlinkMessage::DelNeighbour(m) => apply_neighbour(fib, m, true),
        RouteNetlinkMessage::NewRoute(m) => apply_route(fib, m, false),
        RouteNetlinkMessage::DelRoute(m) => apply_route(fib, m, true),
        _ => false,
    }
}

fn apply_link(fib: &mut Fib, m: &LinkMessage) {
    let link = fib.link_mut(m.header.index);
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(b) if b.len() == 6 => link.mac.copy_from_slice(b),
            LinkAttribute::OperState(st) => {
                link.oper_up = match st {
                    State::Up => Some(true),
                    State::Unknown => None,
                    _ => Some(false),
                };
            }
            _ => {}
        }
    }
}

fn apply_address(fib: &mut Fib, m: &AddressMessage, add: bool) -> bool {
    // IFA_LOCAL is the node's own address on point-to-point links; IFA_ADDRESS
    // otherwise. Prefer LOCAL when present.
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    let Some(addr) = addr else { return false };
    let link = fib.link_mut(m.header.index);
    match addr {
        IpAddr::V4(a) => {
            link.v4.retain(|x| *x != a);
            if add {
                link.v4.push(a);
            }
        }
        IpAddr::V6(a) => {
            link.v6.retain(|x| *x != a);
            if add {
                link.v6.push(a);
            }
        }
    }
    true
}

fn apply_neighbour(fib: &mut Fib, m: &NeighbourMessage, delete: bool) -> bool {
    let mut ip = None;
    let mut mac: Option<Mac> = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6));
            }
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                let mut x = [0; 6];
                x.copy_from_slice(b);
                mac = Some(x);
            }
            _ => {}
        }
    }
    let Some(ip) = ip else { return false };
    // The states in which the kernel itself would transmit to the entry.
    let usable = matches!(
        m.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    let mac = if delete || !usable { None } else { mac };
    fib.set_neighbour(m.header.ifindex, ip, mac);
    true
}

fn apply_route(fib: &mut Fib, m: &RouteMessage, delete: bool) -> bool {
    let mut table = u32::from(m.header.table);
    let mut dst = None;
    let mut gw = None;
    let mut oif = 0;
    let mut priority = 0;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = Some(d.clone()),
            RouteAttribute::Gateway(g) => gw = Some(g.clone()),
            RouteAttribute::Oif(o) => oif = *o,
            RouteAttribute::Priority(p) => priority = *p,
            RouteAttribute::MultiPath(hops) if oif == 0 => {
                // Equal-cost routes: the first live next hop carries the flow.
                if let Some(h) = hops.first() {
                    oif = h.interface_index;
                    for ha in &h.attributes {
                        if let RouteAttribute::Gateway(g) = ha {
                            gw = Some(g.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return false;
    }
    let kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit => RouteKind::Reject,
        _ => return false,
    };
    let len = m.header.destination_prefix_length;
    match m.header.address_family {
        AddressFamily::Inet => {
            let prefix = match dst {
                Some(RouteAddress::Inet(a)) => a,
                None => Ipv4Addr::UNSPECIFIED,
                _ => return false,
            };
            if delete {
                fib.remove_route4(prefix, len, priority);
            } else {
                let gateway = match gw {
                    Some(RouteAddress::Inet(g)) => Some(g),
                    _ => None,
                };
                fib.upsert_route4(Route {
                    prefix,
                    len,
                    oif,
                    gateway,
                    priority,
                    kind,
                });
            }
            true
        }
        AddressFamily::Inet6 => {
            let prefix = match dst {
                Some(RouteAddress::Inet6(a)) => a,
                None => Ipv6Addr::UNSPECIFIED,
                _ => return false,
            };
            if delete {
                fib.remove_route6(prefix, len, priority);
            } else {
                let gateway = match gw {
                    Some(RouteAddress::Inet6(g)) => Some(g),
                    _ => None,
                };
                fib.upsert_route6(Route {
                    prefix,
                    len,
                    oif,
                    gateway,
                    priority,
                    kind,
                });
            }
            true
        }
        _ => false,
    }
}

fn send_request(sock: &Socket, msg: RouteNetlinkMessage, seq: u32) -> Result<(), NetlinkError> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_DUMP | NLM_F_REQUEST;
    hdr.sequence_number = seq;
    let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
    req.finalize();
    let mut buf = vec![0; req.header.length as usize];
    req.serialize(&mut buf);
    sock.send(&buf, 0).map_err(io_err("send"))?;
    Ok(())
}

/// Calls `f` for each message in one datagram.
fn for_each_message(
    buf: &[u8],
    mut f: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    let mut off = 0;
    while off < buf.len() {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]).map_err(|e| {
            NetlinkError::Dump {
                what: "message",
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }
        })?;
        let len = msg.header.length as usize;
        f(msg)?;
        if len == 0 {
            break;
        }
        off += (len + 3) & !3;
    }
    Ok(())
}

/// Adds (`add`) or removes the host address `addr` (a /32 or a /128) on
/// `ifindex`. Adding an address that is there, or removing one that is
/// not, succeeds. An IPv6 address is added without duplicate address
/// detection: the address moves between the pair's nodes, and DAD would
/// hold it tentative (unusable) for a second on every takeover.
pub fn set_address(ifindex: u32, addr: IpAddr, add: bool) -> Result<(), NetlinkError> {
    let len = if addr.is_ipv4() { 32 } else { 128 };
    let what = || {
        format!(
            "{} {addr}/{len} on ifindex {ifindex}",
            if add { "adding" } else { "removing" }
        )
    };
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(io_err("socket"))?;
    sock.bind_auto().map_err(io_err("bind"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(io_err("connect"))?;
    let mut m = AddressMessage::default();
    m.header.prefix_len = len;
    m.header.index = ifindex;
    if addr.is_ipv4() {
        m.header.family = AddressFamily::Inet;
        m.attributes.push(AddressAttribute::Local(addr));
    } else {
        m.header.family = AddressFamily::Inet6;
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m.attributes.push(AddressAttribute::Address(addr));
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
    let msg = if add {
        hdr.flags |= NLM_F_CREATE | NLM_F_REPLACE;
        RouteNetlinkMessage::NewAddress(m)
    } else {
        RouteNetlinkMessage::DelAddress(m)
    };
    let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
    req.finalize();
    let mut buf = vec![0; req.header.length as usize];
    req.serialize(&mut buf);
    sock.send(&buf, 0).map_err(io_err("send"))?;
    let mut buf = vec![0u8; 8192];
    let n = sock.recv(&mut &mut buf[..], 0).map_err(io_err("recv"))?;
    let mut result = Ok(());
    for_each_message(&buf[..n], |msg| {
        if let NetlinkPayload::Error(e) = msg.payload
            && let Some(code) = e.code
        {
            let errno = -code.get();
            let fine = if add {
                errno == libc::EEXIST
            } else {
                errno == libc::EADDRNOTAVAIL
            };
            if !fine {
                result = Err(NetlinkError::Request {
                    what: what(),
                    source: io::Error::from_raw_os_error(errno),
                });
            }
        }
        Ok(())
    })?;
    result
}

/// Dumps links, addresses, routes and neighbours into a fresh [`Fib`].
pub fn dump() -> Result<Fib, NetlinkError> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(io_err("socket"))?;
    sock.bind_auto().map_err(io_err("bind"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(io_err("connect"))?;
    let mut fib = Fib::default();
    let requests: [(&'static str, RouteNetlinkMessage); 6] = [
        (
            "links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        ),
        (
            "addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        ),
        ("ipv4 routes", {
            let mut m = RouteMessage::default();
            m.header.address_family = AddressFamily::Inet;
            RouteNetlinkMessage::GetRoute(m)
        }),
        ("ipv6 routes", {
            let mut m = RouteMessage::default();
            m.header.address_family = AddressFamily::Inet6;
            RouteNetlinkMessage::GetRoute(m)
        }),
        ("ipv4 neighbours", {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet;
            RouteNetlinkMessage::GetNeighbour(m)
        }),
        ("ipv6 neighbours", {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet6;
            RouteNetlinkMessage::GetNeighbour(m)
        }),
    ];
    let mut buf = vec![0u8; 1 << 16];
    for (seq, (what, req)) in requests.into_iter().enumerate() {
        send_request(&sock, req, seq as u32 + 1)?;
        let mut done = false;
        while !done {
            let n = sock.recv(&mut &mut buf[..], 0).map_err(io_err("recv"))?;
            for_each_message(&buf[..n], |msg| {
                match msg.payload {
                    NetlinkPayload::Done(_) => done = true,
                    NetlinkPayload::Error(e) => {
                        let errno = e.code.map_or(libc::EIO, |c| -c.get());
                        return Err(NetlinkError::Dump {
                            what,
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        apply(&mut fib, &m);
                    }
                    _ => {}
                }
                Ok(())
            })?;
        }
    }
    Ok(fib)
}

/// An rtnetlink event subscription.
pub struct Monitor {
    sock: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribes to link, address, route and neighbour changes.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io_err("socket"))?;
        sock.bind_auto().map_err(io_err("bind"))?;
        for g in [
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV6_ROUTE,
        ] {
            sock.add_membership(g).map_err(io_err("add_membership"))?;
        }
        sock.set_non_blocking(true)
            .map_err(io_err("set_non_blocking"))?;
        Ok(Self {
            sock,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Runs until `stop` is set: applies every event to `fib` and calls
    /// `publish` after each burst of changes. Re-dumps on overrun.
    pub fn run(
        &mut self,
        mut fib: Fib,
        stop: &Arc<AtomicBool>,
        mut publish: impl FnMut(&Fib),
    ) -> Result<(), NetlinkError> {
        let fd = self.sock.as_raw_fd();
        while !stop.load(Ordering::Relaxed) {
            if !crate::sys::poll_readable(&[fd], Duration::from_millis(200)) {
                continue;
            }
            let mut changed = false;
            loop {
                match self.sock.recv(&mut &mut self.buf[..], 0) {
                    Ok(n) => {
                        for_each_message(&self.buf[..n], |msg| {
                            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                                changed |= apply(&mut fib, &m);
                            }
                            Ok(())
                        })?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        tracing::warn!("netlink receive buffer overrun; dumping again");
                        fib = dump()?;
                        changed = true;
                    }
                    Err(e) => return Err(io_err("recv")(e)),
                }
            }
            if changed {
                publish(&fib);
            }
        }
        Ok(())
    }
}
