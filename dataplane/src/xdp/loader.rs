//! Loads the embedded XDP program, attaches it and owns its maps.
//!
//! Design: the program is attached through a BPF link, so it detaches when
//! the last descriptor closes, including when tandemd dies without cleaning
//! up: a crash leaves nothing that blocks the next start.

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, HashMap, MapData, MapError, PerCpuArray, XskMap},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode},
};
use tandem_common::{
    ArpAnswer, ControlKey, ControlPeer, FLOW_WAYS, FastIfaceCounter, IfaceSlot, LocalV4Key,
    LocalV6Key, MAX_IFACES, MAX_IFINDEX, NodeRole, PROGRAM_NAME, XdpCounter, fast_iface_index, map,
    xsk_index,
};
use tandem_control::config;

use super::{
    clock::Clock,
    flow::{FlowMap, FlowMap6},
};

/// The object built by build.rs.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tandem-xdp"));

/// Errors loading or driving the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program {PROGRAM_NAME}: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("seeding the flow table: {0}")]
    Seed(#[source] io::Error),
    #[error("mapping the fast path's clock (TND_CLOCK): {0}")]
    Clock(#[source] io::Error),
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("map TND_TX_PORTS: {0}")]
    TxPort(String),
    #[error("attaching XDP to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> LoaderError {
    move |source| LoaderError::Map { name, source }
}

/// The loaded program and its maps.
pub struct Loader {
    ebpf: Ebpf,
    role: Array<MapData, NodeRole>,
    ifaces: HashMap<MapData, u32, IfaceSlot>,
    xsks: XskMap<MapData>,
    local4: HashMap<MapData, LocalV4Key, u32>,
    local6: HashMap<MapData, LocalV6Key, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// Interface slot plus one by ifindex, for the fast path's counters.
    ifslots: Array<MapData, u32>,
    /// The fast path's flow table; workers map it ([`Self::flow_map`]).
    flows: MapData,
    flow_slots: u32,
    /// The IPv6 flow map (a kernel hash map; see [`FlowMap`]).
    flows6: MapData,
    /// The fast path's clock (see [`Clock`]).
    clock: MapData,
    flow_seed: u32,
    tx_ports: DevMap<MapData>,
    arp4: HashMap<MapData, LocalV4Key, ArpAnswer>,
    fenced6: HashMap<MapData, LocalV6Key, u32>,
    control: HashMap<MapData, ControlKey, ControlPeer>,
    locals: BTreeSet<IpAddr>,
}

impl Loader {
    /// Loads the program with a flow table of `flow_slots` slots (rounded
    /// up to a power of two) and a fresh hash seed.
    pub fn load(flow_slots: u32) -> Result<Self, LoaderError> {
        let flow_slots = flow_slots.max(FLOW_WAYS).next_power_of_two();
        // One entry per IPv6 direction a full session table can hold;
        // elements are allocated as they are inserted.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map::FLOWS, flow_slots)
            .map_max_entries(map::FLOWS6, flow_slots / 2)
            .load(PROGRAM)?;
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(LoaderError::MissingMap(name));
        let role = Array::try_from(take(map::ROLE)?).map_err(map_err(map::ROLE))?;
        let ifaces = HashMap::try_from(take(map::IFACES)?).map_err(map_err(map::IFACES))?;
        let xsks = XskMap::try_from(take(map::XSKS)?).map_err(map_err(map::XSKS))?;
        let local4 = HashMap::try_from(take(map::LOCAL_V4)?).map_err(map_err(map::LOCAL_V4))?;
        let local6 = HashMap::try_from(take(map::LOCAL_V6)?).map_err(map_err(map::LOCAL_V6))?;
        let counters =
            PerCpuArray::try_from(take(map::COUNTERS)?).map_err(map_err(map::COUNTERS))?;
        let ifslots = Array::try_from(take(map::IFSLOTS)?).map_err(map_err(map::IFSLOTS))?;
        let flows = take(map::FLOWS)?;
        let aya::maps::Map::Array(flows) = flows else {
            return Err(LoaderError::MissingMap(map::FLOWS));
        };
        let aya::maps::Map::HashMap(flows6) = take(map::FLOWS6)? else {
            return Err(LoaderError::MissingMap(map::FLOWS6));
        };
        let aya::maps::Map::Array(clock) = take(map::CLOCK)? else {
            return Err(LoaderError::MissingMap(map::CLOCK));
        };
        let tx_ports = DevMap::try_from(take(map::TX_PORTS)?).map_err(map_err(map::TX_PORTS))?;
        let arp4 = HashMap::try_from(take(map::ARP_V4)?).map_err(map_err(map::ARP_V4))?;
        let fenced6 = HashMap::try_from(take(map::FENCED_V6)?).map_err(map_err(map::FENCED_V6))?;
        let control = HashMap::try_from(take(map::CONTROL)?).map_err(map_err(map::CONTROL))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        prog.load()?;
        let seed: [u8; 4] = crate::sys::random_bytes().map_err(LoaderError::Seed)?;
        let mut l = Self {
            ebpf,
            role,
            ifaces,
            xsks,
            local4,
            local6,
            counters,
            ifslots,
            flows,
            flow_slots,
            flows6,
            clock,
            flow_seed: u32::from_ne_bytes(seed),
            tx_ports,
            arp4,
            fenced6,
            control,
            locals: BTreeSet::new(),
        };
        l.set_forward(false)?;
        // Stamps before the first worker loop are of the load, not 0
        // ("never").
        l.clock()
            .map_err(LoaderError::Clock)?
            .advance(crate::sys::monotonic_ns());
        Ok(l)
    }

    /// Registers interface `ifindex` as `slot` with `queues` XSK queues;
    /// the fast path redirects to `slot` out of it.
    pub fn add_iface(&mut self, ifindex: u32, slot: u32, queues: u32) -> Result<(), LoaderError> {
        self.ifaces
            .insert(ifindex, IfaceSlot { slot, queues }, 0)
            .map_err(map_err(map::IFACES))?;
        if ifindex < MAX_IFINDEX {
            self.ifslots
                .set(ifindex, slot + 1, 0)
                .map_err(map_err(map::IFSLOTS))?;
        } else {
            tracing::warn!(
                ifindex,
                "interface index past {MAX_IFINDEX}: the fast path's frames from it are not \
                 counted as received (they are as sent)"
            );
        }
        self.tx_ports
            .set(slot, ifindex, None, 0)
            .map_err(|e| match e {
                aya::maps::xdp::XdpMapError::MapError(source) => LoaderError::Map {
                    name: map::TX_PORTS,
                    source,
                },
                other @ aya::maps::xdp::XdpMapError::ChainedProgramNotSupported => {
                    LoaderError::TxPort(other.to_string())
                }
            })
    }

    /// The flow table, mapped for a worker (or the ha thread).
    pub fn flow_map(&self) -> io::Result<FlowMap> {
        let fd = self.flows.fd().as_fd().try_clone_to_owned()?;
        Ok(FlowMap::new(&fd, self.flow_slots, self.flow_seed)?
            .with_v6(self.ipv6_flows()?)
            .with_clock(self.clock()?))
    }

    /// The fast path's clock, mapped (workers get it with
    /// [`Self::flow_map`]; tests set it).
    pub fn clock(&self) -> io::Result<Clock> {
        Clock::new(&self.clock.fd().as_fd().try_clone_to_owned()?)
    }

    /// A handle of its own on the IPv6 flow map (a worker's part of
    /// [`Self::flow_map`]; tests write raw entries through it).
    pub fn ipv6_flows(&self) -> io::Result<FlowMap6> {
        let fd = self.flows6.fd().as_fd().try_clone_to_owned()?;
        MapData::from_fd(fd)
            .and_then(|m| HashMap::try_from(aya::maps::Map::HashMap(m)))
            .map_err(io::Error::other)
    }

    /// While the node forwards, the program answers ARP requests for
    /// `address` that arrive on `ifindex`, with `mac`.
    pub fn answer_arp(
        &mut self,
        address: Ipv4Addr,
        ifindex: u32,
        mac: [u8; 6],
    ) -> Result<(), LoaderError> {
        let answer = ArpAnswer {
            ifindex,
            mac,
            kernel: 0,
            pad: 0,
        };
        self.arp4
            .insert(v4key(address), answer, 0)
            .map_err(map_err(map::ARP_V4))
    }

    /// A VIP: its ARP requests (IPv4) or neighbour solicitations (IPv6)
    /// reach the kernel, which answers for it, only while the node
    /// forwards under a valid lease; otherwise the program drops them.
    pub fn fence_vip(&mut self, address: IpAddr) -> Result<(), LoaderError> {
        match address {
            IpAddr::V4(a) => {
                let fenced = ArpAnswer {
                    kernel: 1,
                    ..ArpAnswer::default()
                };
                self.arp4
                    .insert(v4key(a), fenced, 0)
                    .map_err(map_err(map::ARP_V4))
            }
            IpAddr::V6(a) => self
                .fenced6
                .insert(LocalV6Key { addr: a.octets() }, 1, 0)
                .map_err(map_err(map::FENCED_V6)),
        }
    }

    pub fn set_xsk(&mut self, slot: u32, queue: u32, fd: &impl AsRawFd) -> Result<(), LoaderError> {
        self.xsks
            .set(xsk_index(slot, queue), fd.as_raw_fd(), 0)
            .map_err(map_err(map::XSKS))
    }

    /// TCP or UDP (`proto`) to `local` (a control socket of the pair) is
    /// let through to the kernel only from `peer` arriving on `ifindex`;
    /// the rest is dropped and counted (`drop_control`).
    pub fn admit_control(
        &mut self,
        local: SocketAddr,
        proto: u8,
        peer: IpAddr,
        ifindex: u32,
    ) -> Result<(), LoaderError> {
        let wire = |a: IpAddr| match a {
            IpAddr::V4(a) => tandem_common::v4_mapped(a.octets()),
            IpAddr::V6(a) => a.octets(),
        };
        let key = ControlKey {
            addr: wire(local.ip()),
            port: local.port().to_be_bytes(),
            proto,
            pad: 0,
        };
        let who = ControlPeer {
            peer: wire(peer),
            ifindex,
        };
        self.control
            .insert(key, who, 0)
            .map_err(map_err(map::CONTROL))
    }

    /// Forwards (or not) with no lease: fixed roles.
    pub fn set_forward(&mut self, forward: bool) -> Result<(), LoaderError> {
        self.set_role(forward, 0)
    }

    /// Forwards (or not) until `lease_ns` (`CLOCK_MONOTONIC_COARSE`; 0: no
    /// lease). See [`NodeRole::lease_ns`].
    pub fn set_role(&mut self, forward: bool, lease_ns: u64) -> Result<(), LoaderError> {
        self.role
            .set(
                0,
                NodeRole {
                    forward: u32::from(forward),
                    flow_mask: self.flow_slots - 1,
                    flow_seed: self.flow_seed,
                    pad: 0,
                    lease_ns,
                },
                0,
            )
            .map_err(map_err(map::ROLE))
    }

    /// Attaches to `iface` in the configured mode; native falls back to
    /// generic with a warning. Returns the mode in use.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: config::XdpMode,
    ) -> Result<config::XdpMode, LoaderError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        let attach_err = |source| LoaderError::Attach {
            iface: iface.to_owned(),
            source,
        };
        match mode {
            config::XdpMode::Generic => {
                prog.attach(iface, XdpMode::Skb).map_err(attach_err)?;
                Ok(config::XdpMode::Generic)
            }
            config::XdpMode::Native => match prog.attach(iface, XdpMode::Driver) {
                Ok(_) => Ok(config::XdpMode::Native),
                Err(e) => {
                    tracing::warn!(
                        iface,
                        error = %e,
                        "native XDP unavailable; falling back to generic (skb) mode"
                    );
                    prog.attach(iface, XdpMode::Skb).map_err(attach_err)?;
                    Ok(config::XdpMode::Generic)
                }
            },
        }
    }

    /// Makes the XDP local-address maps equal `want`: traffic to these
    /// addresses goes to the kernel.
    pub fn sync_local_addresses(&mut self, want: &BTreeSet<IpAddr>) -> Result<(), LoaderError> {
        for gone in self.locals.difference(want) {
            // A missing key is already the wanted state.
            let _ = match gone {
                IpAddr::V4(a) => self.local4.remove(&v4key(*a)),
                IpAddr::V6(a) => self.local6.remove(&v6key(*a)),
            };
        }
        for new in want.difference(&self.locals) {
            match new {
                IpAddr::V4(a) => self
                    .local4
                    .insert(v4key(*a), 1, 0)
                    .map_err(map_err(map::LOCAL_V4))?,
                IpAddr::V6(a) => self
                    .local6
                    .insert(v6key(*a), 1, 0)
                    .map_err(map_err(map::LOCAL_V6))?,
            }
        }
        self.locals.clone_from(want);
        Ok(())
    }

    /// Runs the loaded program once on `frame` with `BPF_PROG_RUN`, without
    /// any device involved, and returns its XDP action. `ingress` is the
    /// (ifindex, rx queue) the frame pretends to arrive on; the device must
    /// exist in the caller's namespace and have that queue. `None` makes the
    /// kernel use the loopback device. Counters move as for a real frame.
    pub fn run_once(&self, frame: &[u8], ingress: Option<(u32, u32)>) -> Result<u32, LoaderError> {
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        let md = ingress.map(|i| xdp_md(frame, i));
        let mut opts = TestRunOptions::new();
        opts.ctx_in = md.as_ref().map(|m| &m[..]);
        opts.data_in = Some(frame);
        Ok(prog.test_run(opts)?.return_value)
    }

    /// [`Self::run_once`], also returning the frame as the program left it.
    pub fn run_frame(
        &self,
        frame: &[u8],
        ingress: (u32, u32),
    ) -> Result<(u32, Vec<u8>), LoaderError> {
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()?;
        let md = xdp_md(frame, ingress);
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.ctx_in = Some(&md);
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = prog.test_run(opts)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// What the fast path forwarded, per interface slot of `slots`: its
    /// [`FastIfaceCounter`]s summed over the CPUs.
    pub fn fast_iface_totals(
        &self,
        slots: u32,
    ) -> Result<Vec<[u64; FastIfaceCounter::COUNT as usize]>, LoaderError> {
        (0..slots.min(MAX_IFACES))
            .map(|slot| {
                let mut row = [0u64; FastIfaceCounter::COUNT as usize];
                for (k, c) in FastIfaceCounter::ALL.iter().enumerate() {
                    let per_cpu = self
                        .counters
                        .get(&fast_iface_index(slot, *c), 0)
                        .map_err(map_err(map::COUNTERS))?;
                    row[k] = per_cpu.iter().copied().fold(0, u64::wrapping_add);
                }
                Ok(row)
            })
            .collect()
    }

    /// The XDP verdict counters, per counter and CPU.
    pub fn counters_per_cpu(&self) -> Result<Vec<(XdpCounter, Vec<u64>)>, LoaderError> {
        XdpCounter::ALL
            .iter()
            .map(|c| {
                let per_cpu = self
                    .counters
                    .get(&(*c as u32), 0)
                    .map_err(map_err(map::COUNTERS))?;
                Ok((*c, per_cpu.iter().copied().collect()))
            })
            .collect()
    }
}

/// The `struct xdp_md` (data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex) of a test run of `frame` arriving on
/// (ifindex, rx queue) `ingress`.
fn xdp_md(frame: &[u8], ingress: (u32, u32)) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ingress.0.to_ne_bytes());
    md[16..20].copy_from_slice(&ingress.1.to_ne_bytes());
    md
}

fn v4key(a: Ipv4Addr) -> LocalV4Key {
    LocalV4Key {
        addr_be: u32::from_ne_bytes(a.octets()),
    }
}

fn v6key(a: Ipv6Addr) -> LocalV6Key {
    LocalV6Key { addr: a.octets() }
}

/// The packet generator and sink programs of the benchmark harness, built
/// alongside the steering program (see ebpf/xdp/src/bin/bench.rs).
pub static BENCH_PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tandem-bench-xdp"));
