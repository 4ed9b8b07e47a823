//! The sync link's driver: owns the sockets and feeds a [`Conn`].
//!
//! Both roles listen on the sync address; the backup dials the active
//! (from its own sync address, so the active's peer check holds whatever
//! the routes say) and the active accepts only the configured peer. A new
//! connection from the peer replaces the old one: a restarted backup is
//! served at once, not after the dead-peer timeout. A connection that
//! fails (socket error, `Fatal`, silence) is closed and counted; the
//! backup dials again after `REDIAL`. A new connection only replaces a
//! live one once it is proven (a frame after the hello, tagged with its
//! derived key): until then it is a candidate, so a replayed hello from
//! the peer's address cannot tear the live link down.
//!
//! The caller runs `turn` in a loop (it waits in poll(2) for at most the
//! time given), hands in the data path's session events through `add`,
//! `delete`, `refresh` and `cold_sync_complete`, and acts on what
//! `poll_notice` returns.

use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sys::Poller;

use super::{
    Conn, DeleteRecord, Digest, Event, Fatal, NackReason, Op, RefreshRecord, Role, SessionRecord,
    Settings, Stats, SyncState, WireKey,
};

/// How long the backup waits between dial attempts, and for one.
const REDIAL: Duration = Duration::from_millis(200);
const DIAL_TIMEOUT: Duration = Duration::from_millis(300);

/// What the caller acts on.
#[derive(Clone, Debug)]
pub enum Notice {
    Conn(Event),
    /// The connection ended; why.
    Down(LinkError),
}

/// Why the sync link, or an attempt at one, ended.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LinkError {
    #[error("closed by the peer")]
    Closed,
    #[error("replaced by a new connection from the peer")]
    Replaced,
    #[error("role changed to {0}")]
    RoleChanged(&'static str),
    #[error("read: {0}")]
    Read(#[source] Arc<io::Error>),
    #[error("write: {0}")]
    Write(#[source] Arc<io::Error>),
    #[error(transparent)]
    Protocol(#[from] Fatal),
    #[error("dial {peer}: {source}")]
    Dial {
        peer: SocketAddr,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("accept: {0}")]
    Accept(#[source] Arc<io::Error>),
    #[error("new connection from the peer: {0}")]
    Candidate(#[source] Box<LinkError>),
}

struct Link {
    stream: TcpStream,
    conn: Conn,
    peer: SocketAddr,
}

pub struct Driver {
    settings: Settings,
    local: SocketAddr,
    peer: SocketAddr,
    /// The interface the sockets are bound to, if any.
    device: Option<String>,
    listener: TcpListener,
    link: Option<Link>,
    /// A new connection from the peer, waiting to prove itself before it
    /// replaces `link`.
    candidate: Option<Link>,
    next_dial: Instant,
    /// Until when the listener is left alone after accept(2) failed.
    accept_after: Instant,
    notices: VecDeque<Notice>,
    buf: Vec<u8>,
    /// The listener and the connections, waited on each turn.
    poller: Poller,
    pub stats: Stats,
    /// Why the last connection ended.
    pub last_error: Option<LinkError>,
    /// The caller cannot take more records now: the link's socket is left
    /// unread, so TCP's window slows the peer instead.
    held: bool,
}

fn nonce() -> [u8; 16] {
    // The kernel's random source does not fail once the system booted;
    // a connection must not go on with a predictable nonce if it did.
    crate::sys::random_bytes().expect("getrandom(2)")
}

impl Driver {
    /// Binds the listener and every connection dialed from now on to
    /// interface `dev` (SO_BINDTODEVICE): a segment for the sync address
    /// that arrives on another interface never reaches them.
    pub fn bind_device(&mut self, dev: &str) -> io::Result<()> {
        socket2::SockRef::from(&self.listener).bind_device(Some(dev.as_bytes()))?;
        self.device = Some(dev.to_owned());
        Ok(())
    }

    /// Listens on `local` (port included); `peer` is the only address let
    /// in, and the one the backup dials.
    pub fn new(settings: Settings, local: SocketAddr, peer: SocketAddr) -> io::Result<Self> {
        let sock = Socket::new(
            Domain::for_address(local),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        sock.bind(&SockAddr::from(local))?;
        sock.listen(4)?;
        sock.set_nonblocking(true)?;
        let listener: TcpListener = sock.into();
        let local = listener.local_addr()?;
        Ok(Self {
            settings,
            local,
            peer,
            device: None,
            listener,
            link: None,
            candidate: None,
            next_dial: Instant::now(),
            accept_after: Instant::now(),
            notices: VecDeque::new(),
            buf: vec![0; 256 * 1024],
            poller: Poller::default(),
            stats: Stats::default(),
            last_error: None,
            held: false,
        })
    }

    /// Takes the other side of the replication (the redundancy state
    /// machine decided): the connection ends, as its hellos named the old
    /// roles, and the new backup dials at once.
    pub fn set_role(&mut self, role: Role) {
        if self.settings.role == role {
            return;
        }
        self.settings.role = role;
        if let Some(c) = self.candidate.take() {
            c.conn.close(&mut self.stats);
        }
        self.close(LinkError::RoleChanged(role.name()));
        self.next_dial = Instant::now();
    }

    pub fn role(&self) -> Role {
        self.settings.role
    }

    /// The listening address (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connected peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.link.as_ref().map(|l| l.peer)
    }

    /// Connected with hellos exchanged.
    pub fn is_up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.conn.is_up())
    }

    pub fn sync_state(&self) -> SyncState {
        self.link
            .as_ref()
            .map_or(SyncState::Off, |l| l.conn.sync_state())
    }

    pub fn add_pending(&self) -> u64 {
        self.link.as_ref().map_or(0, |l| l.conn.add_pending())
    }

    /// Bytes queued for the peer and not yet written.
    pub fn backlog(&self) -> usize {
        self.link.as_ref().map_or(0, |l| l.conn.output().len())
    }

    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// Queues a session add; false when it could not be (counted).
    pub fn add(&mut self, r: &SessionRecord) -> bool {
        if let Some(l) = &mut self.link {
            l.conn.add(r, Instant::now(), &mut self.stats)
        } else {
            self.stats.send_discard += 1;
            false
        }
    }

    /// Queues a session delete; false when it could not be (counted).
    pub fn delete(&mut self, r: &DeleteRecord) -> bool {
        if let Some(l) = &mut self.link {
            l.conn.delete(r, Instant::now(), &mut self.stats)
        } else {
            self.stats.send_discard += 1;
            false
        }
    }

    /// Queues a session refresh; false when it could not be (counted).
    pub fn refresh(&mut self, r: &RefreshRecord) -> bool {
        if let Some(l) = &mut self.link {
            l.conn.refresh(r, Instant::now(), &mut self.stats)
        } else {
            self.stats.send_discard += 1;
            false
        }
    }

    /// (Backup) asks the active for a resync (see [`Conn::request_resync`]).
    pub fn request_resync(&mut self) -> Result<(), &'static str> {
        match &mut self.link {
            Some(l) => l.conn.request_resync(Instant::now(), &mut self.stats),
            None => Err("the sync link is down"),
        }
    }

    /// (Active) replication lag quantile `q` in microseconds (0: none).
    pub fn lag_us(&self, q: f64) -> u64 {
        self.link.as_ref().map_or(0, |l| l.conn.lag().quantile(q))
    }

    /// (Active) how long the oldest unacknowledged batch has waited.
    pub fn oldest_unacked(&self) -> Duration {
        self.link
            .as_ref()
            .map_or(Duration::ZERO, |l| l.conn.oldest_unacked(Instant::now()))
    }

    /// Whether a resync is under way.
    pub fn resyncing(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.conn.resyncing())
    }

    /// Whether the peer sends digests.
    pub fn peer_has_digest(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.conn.peer_has_digest())
    }

    /// Sends this node's digest to a peer that reads digests.
    pub fn send_digest(&mut self, d: Digest) {
        if let Some(l) = &mut self.link {
            l.conn.send_digest(d, Instant::now(), &mut self.stats);
        }
    }

    pub fn cold_sync_complete(&mut self, sessions: u64) {
        if let Some(l) = &mut self.link {
            l.conn
                .cold_sync_complete(sessions, Instant::now(), &mut self.stats);
        }
    }

    pub fn nack(&mut self, seq: u64, op: Op, reason: NackReason, key: WireKey) {
        if let Some(l) = &mut self.link {
            l.conn
                .nack(seq, op, reason, key, Instant::now(), &mut self.stats);
        }
    }

    /// Leaves the link's socket unread while `hold` (the records already
    /// read still come out as notices): a receiver whose consumers are
    /// behind lets TCP's flow control slow the sender rather than drop
    /// what it cannot queue. Writes, acknowledgements and timers go on.
    /// Held longer than the dead interval, the link ends as silent.
    pub fn hold_reads(&mut self, hold: bool) {
        self.held = hold;
    }

    /// Accepts, dials, reads, writes and runs timers, waiting up to `wait`
    /// for the sockets.
    pub fn turn(&mut self, wait: Duration) {
        let now = Instant::now();
        if self.link.is_none() && self.settings.role == Role::Backup && now >= self.next_dial {
            self.dial(now);
        }
        let p = &mut self.poller;
        p.clear();
        // accept(2) failed (out of descriptors?): don't spin on it.
        let listener = p.push(self.listener.as_raw_fd(), now >= self.accept_after, false);
        let mut wait = wait;
        for (c, read) in [(&self.link, !self.held), (&self.candidate, true)] {
            let Some(c) = c else { continue };
            p.push(c.stream.as_raw_fd(), read, !c.conn.output().is_empty());
            wait = wait.min(c.conn.timeout().saturating_duration_since(now));
        }
        // An interrupted wait reads as nothing ready: the caller turns
        // again.
        p.wait(wait);
        if p.readable(listener) {
            self.accept();
        }
        let now = Instant::now();
        self.service_candidate(now);
        if let Err(why) = self.service(now) {
            self.close(why);
        }
    }

    /// Runs the candidate connection; promotes it once proven, drops it
    /// (counted as a teardown) when it fails.
    fn service_candidate(&mut self, now: Instant) {
        let Some(c) = &mut self.candidate else {
            return;
        };
        if let Err(why) = pump(c, &mut self.buf, now, &mut self.stats, true) {
            let c = self.candidate.take().expect("checked above");
            c.conn.close(&mut self.stats);
            self.last_error = Some(LinkError::Candidate(Box::new(why)));
            return;
        }
        if c.conn.is_proven() {
            self.close(LinkError::Replaced);
            self.link = self.candidate.take();
        }
    }

    fn dial(&mut self, now: Instant) {
        self.next_dial = now + REDIAL;
        let attempt = || -> io::Result<TcpStream> {
            let sock = Socket::new(
                Domain::for_address(self.peer),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            if let Some(dev) = &self.device {
                sock.bind_device(Some(dev.as_bytes()))?;
            }
            sock.bind(&SockAddr::from(SocketAddr::new(self.local.ip(), 0)))?;
            sock.connect_timeout(&SockAddr::from(self.peer), DIAL_TIMEOUT)?;
            Ok(sock.into())
        };
        match attempt() {
            Ok(stream) => self.open(stream, self.peer, true),
            Err(e) => {
                self.last_error = Some(LinkError::Dial {
                    peer: self.peer,
                    source: Arc::new(e),
                });
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    if from.ip() != self.peer.ip() || self.settings.role != Role::Active {
                        // Only the configured peer, and only into the active.
                        self.stats.refused_connections += 1;
                        drop(stream);
                        continue;
                    }
                    self.open(stream, from, false);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.last_error = Some(LinkError::Accept(Arc::new(e)));
                    self.accept_after = Instant::now() + REDIAL;
                    return;
                }
            }
        }
    }

    fn open(&mut self, stream: TcpStream, peer: SocketAddr, dialed: bool) {
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            return;
        }
        let conn = Conn::new(
            self.settings.clone(),
            dialed,
            nonce(),
            Instant::now(),
            &mut self.stats,
        );
        let new = Some(Link { stream, conn, peer });
        if self.link.is_none() {
            self.link = new;
        } else if let Some(old) = std::mem::replace(&mut self.candidate, new) {
            // A newer candidate supersedes one that never proved itself.
            old.conn.close(&mut self.stats);
        }
    }

    fn close(&mut self, why: LinkError) {
        if let Some(l) = self.link.take() {
            l.conn.close(&mut self.stats);
            self.notices.push_back(Notice::Down(why.clone()));
            self.last_error = Some(why);
        }
    }

    /// Reads, runs timers, writes, and passes the link's events on.
    fn service(&mut self, now: Instant) -> Result<(), LinkError> {
        let Some(l) = &mut self.link else {
            return Ok(());
        };
        pump(l, &mut self.buf, now, &mut self.stats, !self.held)?;
        while let Some(e) = l.conn.poll_event() {
            self.notices.push_back(Notice::Conn(e));
        }
        Ok(())
    }

    /// Writes what is queued now rather than at the next turn (after the
    /// caller fed a burst of records).
    pub fn flush(&mut self) {
        let now = Instant::now();
        if let Err(why) = self.service(now) {
            self.close(why);
        }
    }
}

/// Bytes one turn reads from a connection at most: a bound on the records
/// the caller must take in one go (a cold sync arrives at several hundred
/// MB/s), whatever the socket's buffer has grown to.
const READ_PER_TURN: usize = 1 << 20;

/// Reads what the socket has (if `read`; at most [`READ_PER_TURN`] bytes),
/// runs the connection's timers and writes what it can. Events stay in the
/// connection.
fn pump(
    l: &mut Link,
    buf: &mut [u8],
    now: Instant,
    stats: &mut Stats,
    read: bool,
) -> Result<(), LinkError> {
    let mut budget = if read { READ_PER_TURN } else { 0 };
    while budget > 0 {
        match l.stream.read(buf) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => {
                budget = budget.saturating_sub(n);
                l.conn.recv(&buf[..n], now, stats)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LinkError::Read(Arc::new(e))),
        }
    }
    if now >= l.conn.timeout() {
        l.conn.on_timeout(now, stats)?;
    }
    while !l.conn.output().is_empty() {
        match l.stream.write(l.conn.output()) {
            Ok(n) => l.conn.consumed(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                stats.batch_flush_failures += 1;
                return Err(LinkError::Write(Arc::new(e)));
            }
        }
    }
    Ok(())
}
