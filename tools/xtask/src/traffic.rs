//! Traffic endpoints for the lab: a TCP/UDP echo server and a client that
//! runs bounded concurrent flows against it and reports what crossed.
//! Both stop by themselves.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TrafficCmd {
    /// Echo TCP and UDP on PORT for SECONDS.
    Serve {
        #[arg(long, default_value_t = 7)]
        port: u16,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Run TCP connections and UDP echoes against a server.
    Client {
        #[arg(long)]
        server: IpAddr,
        #[arg(long, default_value_t = 7)]
        port: u16,
        /// Concurrent TCP connections.
        #[arg(long, default_value_t = 20)]
        tcp: usize,
        /// Echo round trips per TCP connection (1 KiB each).
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// UDP echoes.
        #[arg(long, default_value_t = 200)]
        udp: usize,
    },
    /// Hold TCP connections open for SECONDS, each echoing 64 bytes every
    /// INTERVAL_MS, and report which survived and the longest gap between
    /// two answered echoes (the failover measure); beside them a UDP
    /// stream of numbered datagrams every UDP_INTERVAL_MS (0: none),
    /// whose echoes lost and longest gap are reported too. The last line
    /// is JSON.
    Hold {
        #[arg(long)]
        server: IpAddr,
        #[arg(long, default_value_t = 7)]
        port: u16,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        #[arg(long, default_value_t = 5)]
        udp_interval_ms: u64,
        /// Write every answered echo's time to FILE (JSON: the start in
        /// Unix ms, then per connection and for the UDP stream the ms
        /// since it), for a timeline picture.
        #[arg(long)]
        timeline: Option<std::path::PathBuf>,
    },
    /// Send junk UDP datagrams (128 bytes) to each TARGET (addr:port) in
    /// turn, as fast as one thread can, for SECONDS; print how many.
    Flood {
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<SocketAddr>,
        #[arg(long, default_value_t = 2)]
        seconds: u64,
    },
}

pub fn run(cmd: &TrafficCmd) -> Result<()> {
    match *cmd {
        TrafficCmd::Serve { port, seconds } => serve(port, Duration::from_secs(seconds)),
        TrafficCmd::Client {
            server,
            port,
            tcp,
            rounds,
            udp,
        } => {
            let r = client(SocketAddr::new(server, port), tcp, rounds, udp)?;
            println!("{}", r.line());
            if r.tcp_ok < tcp || r.udp_ok < udp {
                bail!("not all flows crossed");
            }
            Ok(())
        }
        TrafficCmd::Hold {
            server,
            port,
            conns,
            seconds,
            interval_ms,
            udp_interval_ms,
            ref timeline,
        } => {
            let to = SocketAddr::new(server, port);
            let life = Duration::from_secs(seconds);
            let (start, start_unix_ms) = (Instant::now(), unix_ms());
            let stream = (udp_interval_ms > 0).then(|| {
                let every = Duration::from_millis(udp_interval_ms);
                thread::spawn(move || udp_stream(to, life, every, start))
            });
            let mut h = hold(to, conns, life, Duration::from_millis(interval_ms), start);
            if let Some(s) = stream {
                h.udp = Some(s.join().unwrap_or_else(|_| Err("panicked".into())));
            }
            if let Some(path) = timeline {
                let udp = match &h.udp {
                    Some(Ok(s)) => s.echoes.clone(),
                    _ => Vec::new(),
                };
                let doc = serde_json::json!({
                    "start_unix_ms": start_unix_ms,
                    "interval_ms": interval_ms,
                    "udp_interval_ms": udp_interval_ms,
                    "tcp": h.echoes,
                    "udp": udp,
                });
                std::fs::write(path, doc.to_string())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", h.line());
            println!("{}", h.json());
            Ok(())
        }
        TrafficCmd::Flood {
            ref targets,
            seconds,
        } => {
            let s = UdpSocket::bind(if targets[0].is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            let junk = [0x5au8; 128];
            let (mut sent, mut i) = (0u64, 0usize);
            let end = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < end {
                if s.send_to(&junk, targets[i % targets.len()]).is_ok() {
                    sent += 1;
                }
                i += 1;
            }
            println!("{{\"sent\":{sent}}}");
            Ok(())
        }
    }
}

/// A UDP stream's outcome: datagrams sent, echoes lost, and the longest
/// gap between two echoes (ms).
#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub sent: u64,
    pub lost: u64,
    pub max_gap_ms: u64,
    /// When each echo came back: ms since the run's start.
    pub echoes: Vec<u32>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_millis()).unwrap_or(u32::MAX)
}

/// Sends a numbered datagram to `to` every `every` for `life` and counts
/// the echoes that come back (within half a second of the last send).
fn udp_stream(
    to: SocketAddr,
    life: Duration,
    every: Duration,
    start: Instant,
) -> Result<Stream, String> {
    let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .map_err(|e| e.to_string())?;
    s.connect(to).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(1)))
        .map_err(|e| e.to_string())?;
    let end = Instant::now() + life;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut seen = vec![false; 0];
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    let mut next = Instant::now();
    let mut buf = [0u8; 64];
    let drain = end + Duration::from_millis(500);
    let mut echoes = Vec::new();
    while Instant::now() < drain {
        let now = Instant::now();
        if now < end && now >= next {
            let _ = s.send(&sent.to_be_bytes());
            sent += 1;
            seen.push(false);
            next += every;
        }
        if let Ok(n) = s.recv(&mut buf)
            && n == 8
        {
            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
            if let Some(slot) = usize::try_from(seq).ok().and_then(|i| seen.get_mut(i))
                && !*slot
            {
                *slot = true;
                got += 1;
                echoes.push(ms_since(start));
                let now = Instant::now();
                worst = worst.max(now - last);
                last = now;
            }
        }
    }
    Ok(Stream {
        sent,
        lost: sent - got,
        max_gap_ms: u64::try_from(worst.as_millis()).unwrap_or(u64::MAX),
        echoes,
    })
}

/// What held connections saw.
pub struct Held {
    pub conns: usize,
    /// Connections that never failed and answered until the end.
    pub kept: usize,
    /// Per connection: its longest gap between answered echoes (ms), or
    /// the error that ended it.
    pub gaps: Vec<Result<u64, String>>,
    /// The UDP stream beside them, if one ran.
    pub udp: Option<Result<Stream, String>>,
    /// Per connection, when each echo came back: ms since the start.
    pub echoes: Vec<Vec<u32>>,
}

impl Held {
    pub fn max_gap_ms(&self) -> u64 {
        self.gaps.iter().flatten().copied().max().unwrap_or(0)
    }

    pub fn line(&self) -> String {
        let failed: Vec<&String> = self.gaps.iter().filter_map(|g| g.as_ref().err()).collect();
        let first = failed
            .first()
            .map(|e| format!("; {} failed, first: {e}", failed.len()))
            .unwrap_or_default();
        format!(
            "hold: kept {}/{} connections; longest gap {} ms{first}",
            self.kept,
            self.conns,
            self.max_gap_ms()
        )
    }

    pub fn json(&self) -> String {
        let mut ok: Vec<u64> = self.gaps.iter().flatten().copied().collect();
        ok.sort_unstable();
        let udp = match &self.udp {
            Some(Ok(s)) => format!(
                ",\"udp_sent\":{},\"udp_lost\":{},\"udp_max_gap_ms\":{}",
                s.sent, s.lost, s.max_gap_ms
            ),
            Some(Err(e)) => format!(",\"udp_error\":{e:?}"),
            None => String::new(),
        };
        format!(
            "{{\"conns\":{},\"kept\":{},\"max_gap_ms\":{},\"median_gap_ms\":{}{udp}}}",
            self.conns,
            self.kept,
            self.max_gap_ms(),
            ok.get(ok.len() / 2).copied().unwrap_or(0)
        )
    }
}

fn hold_one(
    server: SocketAddr,
    id: usize,
    end: Instant,
    every: Duration,
    start: Instant,
    echoes: &mut Vec<u32>,
) -> Result<u64, String> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    // Longer than any failover: TCP's retransmissions carry the gap.
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut msg, mut back) = ([0u8; 64], [0u8; 64]);
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    let mut round = 0u64;
    while Instant::now() < end {
        msg[..8].copy_from_slice(&(id as u64).to_be_bytes());
        msg[8..16].copy_from_slice(&round.to_be_bytes());
        s.write_all(&msg)
            .map_err(|e| format!("round {round}: write: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("round {round}: read: {e}"))?;
        if back != msg {
            return Err(format!("round {round}: echo mismatch"));
        }
        let now = Instant::now();
        echoes.push(ms_since(start));
        worst = worst.max(now - last);
        last = now;
        round += 1;
        thread::sleep(every);
    }
    Ok(u64::try_from(worst.as_millis()).unwrap_or(u64::MAX))
}

/// Holds `conns` echoing connections for `life`; echo times count from
/// `start`.
pub fn hold(
    server: SocketAddr,
    conns: usize,
    life: Duration,
    every: Duration,
    start: Instant,
) -> Held {
    let end = Instant::now() + life;
    let handles: Vec<_> = (0..conns)
        .map(|id| {
            thread::spawn(move || {
                let mut echoes = Vec::new();
                let r = hold_one(server, id, end, every, start, &mut echoes);
                (r, echoes)
            })
        })
        .collect();
    let (gaps, echoes): (Vec<Result<u64, String>>, Vec<Vec<u32>>) = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| (Err("panicked".into()), Vec::new()))
        })
        .unzip();
    Held {
        conns,
        kept: gaps.iter().filter(|g| g.is_ok()).count(),
        gaps,
        udp: None,
        echoes,
    }
}

fn serve(port: u16, life: Duration) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let tcp = TcpListener::bind(("0.0.0.0", port)).context("bind tcp")?;
    tcp.set_nonblocking(true)?;
    let udp = UdpSocket::bind(("0.0.0.0", port)).context("bind udp")?;
    udp.set_read_timeout(Some(Duration::from_millis(100)))?;
    let s2 = Arc::clone(&stop);
    let u = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    });
    let end = Instant::now() + life;
    while Instant::now() < end {
        match tcp.accept() {
            Ok((mut s, _)) => {
                let s3 = Arc::clone(&stop);
                thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = [0u8; 16384];
                    while !s3.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = u.join();
    Ok(())
}

/// What a client run achieved.
pub struct Report {
    pub tcp: usize,
    pub tcp_ok: usize,
    pub tcp_bytes: u64,
    pub udp: usize,
    pub udp_ok: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn line(&self) -> String {
        format!(
            "tcp: {}/{} connections echoed {} bytes; udp: {}/{} echoes; {:.2} s",
            self.tcp_ok,
            self.tcp,
            self.tcp_bytes,
            self.udp_ok,
            self.udp,
            self.elapsed.as_secs_f64()
        )
    }
}

fn tcp_flow(server: SocketAddr, rounds: usize, id: usize) -> Result<u64> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_nodelay(true)?;
    let mut msg = [0u8; 1024];
    let mut back = [0u8; 1024];
    let mut bytes = 0;
    for r in 0..rounds {
        for (i, b) in msg.iter_mut().enumerate() {
            *b = (id + r + i) as u8;
        }
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if back != msg {
            bail!("connection {id}: echo mismatch in round {r}");
        }
        bytes += msg.len() as u64;
    }
    Ok(bytes)
}

pub fn client(server: SocketAddr, tcp: usize, rounds: usize, udp: usize) -> Result<Report> {
    let start = Instant::now();
    let handles: Vec<_> = (0..tcp)
        .map(|id| thread::spawn(move || tcp_flow(server, rounds, id)))
        .collect();
    let mut tcp_ok = 0;
    let mut tcp_bytes = 0;
    for h in handles {
        match h.join() {
            Ok(Ok(b)) => {
                tcp_ok += 1;
                tcp_bytes += b;
            }
            Ok(Err(e)) => eprintln!("tcp flow failed: {e}"),
            Err(_) => eprintln!("tcp flow panicked"),
        }
    }
    let sock = UdpSocket::bind(("0.0.0.0", 0))?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut udp_ok = 0;
    let mut buf = [0u8; 2048];
    for i in 0..udp {
        let msg = format!("tandem udp echo {i}");
        sock.send_to(msg.as_bytes(), server)?;
        // Stale answers to earlier, slower echoes are skipped.
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == msg.as_bytes() => {
                    udp_ok += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(Report {
        tcp,
        tcp_ok,
        tcp_bytes,
        udp,
        udp_ok,
        elapsed: start.elapsed(),
    })
}
