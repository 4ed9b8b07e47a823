//! tandem's control plane: configuration, the stats segment, the control
//! socket's requests, session replication (`sync`: the protocol as a pure
//! core, and the driver that owns its TCP socket) and redundancy (`ha`:
//! the state machine, pure, and the heartbeats).

pub mod config;
pub mod ctl;
pub mod ha;
pub mod sessions;
pub mod stats;
pub mod sync;
pub mod sys;

/// An error and every cause under it, on one line: `what: why: why`. A
/// cause a message already quotes is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("binding the socket")]
    struct Outer(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("binding the socket: {0}")]
    struct Quoting(#[source] io::Error);

    #[test]
    fn the_chain_names_every_cause_once() {
        let e = Outer(io::Error::from_raw_os_error(libc::EADDRINUSE));
        let line = super::error_chain(&e);
        assert!(line.starts_with("binding the socket: "), "{line}");
        assert!(line.contains("in use"), "{line}");
        let q = Quoting(io::Error::from_raw_os_error(libc::EADDRINUSE));
        let once = super::error_chain(&q);
        assert_eq!(once.matches("in use").count(), 1, "{once}");
    }
}
