//! A sync connection fed arbitrary bytes from the peer, in arbitrary
//! pieces, with its timers run in between: it may end the connection, but
//! never panics, and its output stays framed.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_control::sync::{Conn, Role, Settings, Stats, wire::frame};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Active
    } else {
        Role::Backup
    };
    let mut s = Settings::new(1, 7, 2, role);
    s.services = 2;
    if mode & 2 != 0 {
        s.key = Some(b"a fuzzing key of 24 bytes".to_vec());
    }
    let mut stats = Stats::default();
    let t0 = Instant::now();
    let mut c = Conn::new(s, mode & 4 != 0, [7; 16], t0, &mut stats);
    // Piece sizes come from the data itself.
    let mut at = 0;
    let mut now = t0;
    while at < rest.len() {
        let n = 1 + usize::from(rest[at]) % 64;
        let end = (at + 1 + n).min(rest.len());
        now += Duration::from_millis(u64::from(rest[at] & 0x0f));
        if c.recv(&rest[(at + 1).min(end)..end], now, &mut stats)
            .is_err()
        {
            break;
        }
        if c.on_timeout(now, &mut stats).is_err() {
            break;
        }
        while c.poll_event().is_some() {}
        at = end;
    }
    // Whatever it wrote is whole frames.
    let out = c.output().to_vec();
    let mut off = 0;
    while off < out.len() {
        match frame(&out[off..]) {
            Ok(Some(f)) => off += f.total,
            other => panic!("output does not frame at {off}: {other:?}"),
        }
    }
    c.close(&mut stats);
});
