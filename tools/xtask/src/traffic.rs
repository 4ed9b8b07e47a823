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
