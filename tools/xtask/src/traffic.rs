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
    /// two answered echoes (the failover measure). The last line is JSON.
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
        } => {
            let h = hold(
                SocketAddr::new(server, port),
                conns,
                Duration::from_secs(seconds),
                Duration::from_millis(interval_ms),
            );
            println!("{}", h.line());
            println!("{}", h.json());
            Ok(())
        }
    }
}

/// What held connections saw.
pub struct Held {
    pub conns: usize,
    /// Connections that never failed and answered until the end.
    pub kept: usize,
    /// Per connection: its longest gap between answered echoes (ms), or
    /// the error that ended it.
    pub gaps: Vec<Result<u64, String>>,
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
        format!(
            "{{\"conns\":{},\"kept\":{},\"max_gap_ms\":{},\"median_gap_ms\":{}}}",
            self.conns,
            self.kept,
            self.max_gap_ms(),
            ok.get(ok.len() / 2).copied().unwrap_or(0)
        )
    }
}

fn hold_one(server: SocketAddr, id: usize, end: Instant, every: Duration) -> Result<u64, String> {
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
        worst = worst.max(now - last);
        last = now;
        round += 1;
        thread::sleep(every);
    }
    Ok(u64::try_from(worst.as_millis()).unwrap_or(u64::MAX))
}

/// Holds `conns` echoing connections for `life`.
pub fn hold(server: SocketAddr, conns: usize, life: Duration, every: Duration) -> Held {
    let end = Instant::now() + life;
    let handles: Vec<_> = (0..conns)
        .map(|id| thread::spawn(move || hold_one(server, id, end, every)))
        .collect();
    let gaps: Vec<Result<u64, String>> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
        .collect();
    Held {
        conns,
        kept: gaps.iter().filter(|g| g.is_ok()).count(),
        gaps,
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
