//! The control socket protocol: one request line, one reply line.
//!
//! Design: plain text so an operator can drive it with `socat` too. A
//! request is at most [`MAX_REQUEST`] bytes; anything unparsable gets an
//! `error:` reply naming what was wrong, never a dropped connection or a
//! crash. `tandemctl` is the client; tandemd's control thread the server.

use std::path::PathBuf;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1024;

/// What a client may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Set every counter's baseline to its current value.
    ClearStatistics,
}

impl Request {
    /// The request as sent on the wire (without the newline).
    pub fn as_line(self) -> &'static str {
        match self {
            Self::ClearStatistics => "clear statistics",
        }
    }
}

/// Parses one request line (whitespace-insensitive, case-insensitive).
pub fn parse_request(line: &str) -> Result<Request, String> {
    let words: Vec<String> = line
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["clear", "statistics"] => Ok(Request::ClearStatistics),
        [] => Err("empty request".into()),
        ["clear", rest @ ..] => Err(format!(
            "unknown clear target {:?} (expected: clear statistics)",
            rest.join(" ")
        )),
        _ => Err(format!(
            "unknown request {:?} (expected: clear statistics)",
            line.trim()
        )),
    }
}

/// The control socket of an instance; `TANDEM_RUN_DIR` overrides /run/tandem.
pub fn socket_path(instance: &str) -> PathBuf {
    std::env::var_os("TANDEM_RUN_DIR")
        .map_or_else(|| PathBuf::from("/run/tandem"), PathBuf::from)
        .join(format!("{instance}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_clear_statistics_loosely() {
        assert_eq!(
            parse_request("clear statistics"),
            Ok(Request::ClearStatistics)
        );
        assert_eq!(
            parse_request("  CLEAR   Statistics \r"),
            Ok(Request::ClearStatistics)
        );
        assert_eq!(
            parse_request(Request::ClearStatistics.as_line()),
            Ok(Request::ClearStatistics)
        );
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        assert!(parse_request("").unwrap_err().contains("empty"));
        assert!(
            parse_request("clear everything")
                .unwrap_err()
                .contains("\"everything\"")
        );
        assert!(
            parse_request("reboot now")
                .unwrap_err()
                .contains("unknown request")
        );
        assert!(parse_request("\u{0}\u{ff}garbage").is_err());
    }
}
