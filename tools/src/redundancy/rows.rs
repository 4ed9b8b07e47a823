//! The ipmpstat-style modes' rows (reference 004): the group (`-g`), the
//! addresses that follow mastership (`-a`), the probe targets (`-t`) and
//! the probes as they finish (`-p`).

use tandem_control::ha::{fsm::State, probe::ProbeState};

use super::Rg;

/// Group mode fields (-g).
pub const GROUP_FIELDS: [&str; 5] = ["GROUP", "GROUPNAME", "STATE", "FDT", "INTERFACES"];

/// ipmpstat's FDT: seconds with two decimals.
fn fdt(ms: u64) -> String {
    format!("{}.{:02}s", ms / 1000, (ms % 1000) / 10)
}

/// Whether an interface is usable: its link is up and its probes (if
/// any) have not failed.
fn usable(r: &Rg, iface: &str) -> bool {
    !r.failed()
        .any(|(c, _, n)| n == iface && c != "worker-stall")
}

/// The monitored interfaces, in id order.
fn interfaces(r: &Rg) -> Vec<String> {
    r.checks
        .iter()
        .filter(|((c, _, _), _)| c == "link-down")
        .map(|((_, _, n), _)| n.clone())
        .collect()
}

/// One row: GROUP is the instance, GROUPNAME the redundancy group id;
/// STATE ok (every interface usable), degraded (some), failed (none);
/// INTERFACES lists active ones bare, usable ones of a node that is not
/// MASTER in parentheses (functioning, not used), unusable ones in
/// brackets.
pub fn group_rows(r: &Rg) -> Vec<Vec<String>> {
    let all = interfaces(r);
    let ok: Vec<&String> = all.iter().filter(|i| usable(r, i)).collect();
    let state = if ok.len() == all.len() {
        "ok"
    } else if ok.is_empty() {
        "failed"
    } else {
        "degraded"
    };
    let master = r.state == State::Master;
    let mut list: Vec<String> = Vec::new();
    if master {
        list.extend(ok.iter().map(|i| (*i).clone()));
    } else {
        list.extend(ok.iter().map(|i| format!("({i})")));
    }
    list.extend(
        all.iter()
            .filter(|i| !usable(r, i))
            .map(|i| format!("[{i}]")),
    );
    let fdt = r
        .probes
        .iter()
        .find(|p| p.state != ProbeState::Disabled)
        .map_or_else(String::new, |p| fdt(p.fdt_ms));
    vec![vec![
        r.instance.clone(),
        r.group.clone(),
        state.to_owned(),
        fdt,
        list.join(" "),
    ]]
}

/// Address mode fields (-a).
pub const ADDRESS_FIELDS: [&str; 5] = ["ADDRESS", "STATE", "GROUP", "INBOUND", "OUTBOUND"];

/// One row per address that follows mastership: up while this node holds
/// it; INBOUND and OUTBOUND name its interface while held and usable.
pub fn address_rows(r: &Rg) -> Vec<Vec<String>> {
    r.addresses
        .iter()
        .map(|a| {
            let via = if a.held && usable(r, &a.interface) {
                a.interface.clone()
            } else {
                String::new()
            };
            vec![
                a.address.clone(),
                if a.held { "up" } else { "down" }.to_owned(),
                r.instance.clone(),
                via.clone(),
                via,
            ]
        })
        .collect()
}

/// Target mode fields (-t).
pub const TARGET_FIELDS: [&str; 4] = ["INTERFACE", "MODE", "TESTADDR", "TARGETS"];

/// One row per monitored interface; MODE `static` (targets from the
/// configuration) or `disabled` (not probed, or no test address).
pub fn target_rows(r: &Rg) -> Vec<Vec<String>> {
    interfaces(r)
        .into_iter()
        .map(|i| match r.probes.iter().find(|p| p.interface == i) {
            Some(p) if p.state != ProbeState::Disabled => vec![
                i,
                "static".to_owned(),
                p.testaddr.clone(),
                p.targets
                    .iter()
                    .map(|t| t.address.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ],
            _ => vec![i, "disabled".to_owned(), String::new(), String::new()],
        })
        .collect()
}

/// The PROBE field of `-i`: the interface's probe state.
pub fn probe_state(r: &Rg, iface: &str) -> &'static str {
    r.probes
        .iter()
        .find(|p| p.interface == iface)
        .map_or("disabled", |p| p.state.name())
}

/// Probe mode fields (-p); RTTAVG and RTTDEV only when asked for.
pub const PROBE_FIELDS: [&str; 8] = [
    "TIME",
    "PROBE",
    "INTERFACE",
    "TARGET",
    "NETRTT",
    "RTT",
    "RTTAVG",
    "RTTDEV",
];
pub const PROBE_DEFAULT: &str = "time,probe,interface,target,netrtt,rtt";

/// One `-p` row; TIME is relative to `start_ns` (negative for probes sent
/// before), round trips in ms with two decimals, empty when lost.
pub fn probe_row(p: &tandem_control::ha::probe::ProbeRow, start_ns: u64) -> Vec<String> {
    // Centiseconds, signed: a probe sent before the start is negative.
    let cs = (i128::from(p.sent_ns) - i128::from(start_ns)) / 10_000_000;
    let sign = if cs < 0 { "-" } else { "" };
    let cs = cs.unsigned_abs();
    let secs = |us: Option<u64>| {
        us.map_or_else(String::new, |u| {
            format!("{}.{:02}ms", u / 1000, (u % 1000) / 10)
        })
    };
    vec![
        format!("{sign}{}.{:02}s", cs / 100, cs % 100),
        p.probe.to_string(),
        p.interface.clone(),
        p.target.to_string(),
        secs(p.net_rtt_us),
        secs(p.rtt_us),
        secs(p.rtt_avg_us),
        secs(p.rtt_dev_us),
    ]
}

/// The finished probes numbered `from` on, asked of the daemon, and the
/// number to ask from next.
pub fn fetch_probes(
    instance: &str,
    from: Option<u64>,
) -> Result<(Vec<tandem_control::ha::probe::ProbeRow>, u64), String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let path = tandem_control::ctl::socket_path(instance);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "instance {instance}: cannot reach tandemd at {}: {e}",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    writeln!(
        s,
        "{}",
        tandem_control::ctl::Request::ShowProbes { from }.as_line()
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut rows = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| format!("reading the answer: {e}"))?;
        if let Some(e) = line.strip_prefix("error: ") {
            return Err(format!("tandemd: {e}"));
        }
        if let Some(n) = line.strip_prefix("end ") {
            let next = n
                .trim()
                .parse()
                .map_err(|_| format!("bad answer: {line:?}"))?;
            return Ok((rows, next));
        }
        rows.push(serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?);
    }
    Err("tandemd closed the connection before the end of the list".into())
}
