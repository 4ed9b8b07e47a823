//! tandemstat against real segment files written by the daemon's writer,
//! in a private stats directory (TANDEM_STATS_DIR).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use tandem_control::stats::{
    IfaceRole, IfaceState, Kind, LinkState, NodeState, Schema, SegmentWriter, XdpAttach,
    layout::{HEADER_SIZE, header},
    unix_ns,
};

struct Fixture {
    dir: PathBuf,
    seg: Arc<SegmentWriter>,
    /// Slot of tandem_worker_rx_packets_total{worker=0}.
    rx0: u32,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A two-worker, two-interface segment with known values.
fn fixture(tag: &str, heartbeat_ns: u64) -> Fixture {
    let dir = std::env::temp_dir().join(format!("tandemstat-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = Schema::new();
    let mut slots = Vec::new();
    for w in 0..2 {
        s.align_block();
        for c in ["rx_packets", "tx_packets", "forwarded"] {
            slots.push(
                s.push(
                    &format!("tandem_worker_{c}_total"),
                    &format!("worker={w}"),
                    Kind::Counter,
                )
                .unwrap(),
            );
        }
        for i in ["in0", "out0"] {
            for c in ["rx_packets", "tx_packets", "rx_bytes", "tx_bytes"] {
                slots.push(
                    s.push(
                        &format!("tandem_iface_{c}_total"),
                        &format!("worker={w},iface={i}"),
                        Kind::Counter,
                    )
                    .unwrap(),
                );
            }
            for r in ["bad_checksum", "no_route"] {
                slots.push(
                    s.push(
                        "tandem_drops_total",
                        &format!("worker={w},iface={i},reason={r}"),
                        Kind::Counter,
                    )
                    .unwrap(),
                );
            }
        }
    }
    for cpu in 0..2 {
        for v in ["redirected", "pass_local"] {
            slots.push(
                s.push(
                    "tandem_xdp_verdicts_total",
                    &format!("cpu={cpu},verdict={v}"),
                    Kind::Counter,
                )
                .unwrap(),
            );
        }
    }
    for st in ["rx_ring_full", "rx_fill_ring_empty_descs"] {
        slots.push(
            s.push(
                &format!("tandem_xsk_{st}_total"),
                "iface=in0,queue=0",
                Kind::Counter,
            )
            .unwrap(),
        );
    }
    let seg =
        Arc::new(SegmentWriter::create(&dir.join("t.stats"), &s, 4242, 2, heartbeat_ns).unwrap());
    // Every slot gets a distinct value: 10, 20, 30, ...
    for (i, slot) in slots.iter().enumerate() {
        seg.value(*slot)
            .store(10 * (i as u64 + 1), Ordering::Relaxed);
    }
    seg.heartbeat(heartbeat_ns);
    seg.write_state(
        &NodeState {
            forward: true,
            interfaces: vec![
                IfaceState {
                    name: "in0".into(),
                    ifindex: 2,
                    role: IfaceRole::Inside,
                    link: LinkState::Up,
                    xdp: XdpAttach::Native,
                    queues: 2,
                },
                IfaceState {
                    name: "out0".into(),
                    ifindex: 3,
                    role: IfaceRole::Outside,
                    link: LinkState::Down,
                    xdp: XdpAttach::Native,
                    queues: 2,
                },
            ],
        }
        .encode(),
    );
    let rx0 = s.entries()[0].slot;
    Fixture { dir, seg, rx0 }
}

fn tandemstat(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandemstat"))
        .env("TANDEM_STATS_DIR", dir)
        .args(["--instance", "t"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn statistics_json_sums_workers_per_interface() {
    let f = fixture("json", unix_ns());
    let o = tandemstat(&f.dir, &["statistics", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pid"], 4242);
    assert_eq!(v["stale"], false);
    let in0 = &v["interfaces"][0];
    assert_eq!(in0["name"], "in0");
    assert_eq!(in0["link"], "up");
    // worker 0 in0 rx_packets is slot #4 (value 40); worker 1's is #4+15 (190).
    assert_eq!(in0["rx_packets"], 40 + 190);
    assert_eq!(v["interfaces"][1]["link"], "down");
    assert_eq!(v["workers"].as_array().unwrap().len(), 2);
    assert_eq!(v["workers"][0]["rx_packets"], 10);
    assert_eq!(v["xdp"]["redirected"], 310 + 330);
    assert_eq!(v["sockets"][0]["rx_ring_full"], 350);
    // JSON keys are snake_case everywhere.
    let text = stdout(&o);
    for key in text.split('"').skip(1).step_by(2) {
        assert!(
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || !text.contains(&format!("\"{key}\":")),
            "non-snake_case key {key}"
        );
    }
}

#[test]
fn statistics_text_shows_every_section() {
    let f = fixture("text", unix_ns());
    let o = tandemstat(&f.dir, &[]);
    assert!(o.status.success());
    let t = stdout(&o);
    for s in [
        "Interfaces:",
        "Workers:",
        "XDP verdicts:",
        "Drops by reason:",
        "AF_XDP sockets",
        "bad_checksum",
    ] {
        assert!(t.contains(s), "missing {s}:\n{t}");
    }
}

#[test]
fn interface_mode_parsable_and_human() {
    let f = fixture("iface", unix_ns());
    let o = tandemstat(&f.dir, &["-i", "-P", "-o", "interface,STATE,flags"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "in0:ok:\nout0:failed:d\n");
    let o = tandemstat(&f.dir, &["-i"]);
    let t = stdout(&o);
    assert!(t.starts_with("INTERFACE  ACTIVE  GROUP"), "{t}");
    assert!(t.contains("in0        yes     t      --"), "{t}");
    let o = tandemstat(&f.dir, &["-i", "-P", "-o", "interface"]);
    assert_eq!(stdout(&o), "in0\nout0\n");
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let f = fixture("args", unix_ns());
    let o = tandemstat(&f.dir, &["-i", "-P"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-P requires -o"), "{}", stderr(&o));
    let o = tandemstat(&f.dir, &["-i", "-o", "interface,nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("\"nosuch\""), "{}", stderr(&o));
    let o = tandemstat(&f.dir, &["-g"]);
    assert_eq!(o.status.code(), Some(2));
    let o = tandemstat(&f.dir, &["-w", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = tandemstat(&f.dir, &["-i", "-g"]);
    assert_eq!(o.status.code(), Some(2), "two modes at once");
}

#[test]
fn missing_segment_names_instance_and_path() {
    let dir = std::env::temp_dir().join(format!("tandemstat-{}-none", std::process::id()));
    let o = tandemstat(&dir, &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("\"t\"") && e.contains("t.stats"), "{e}");
}

#[test]
fn foreign_truncated_and_other_version_segments_are_refused() {
    let f = fixture("bad", unix_ns());
    let p = f.dir.join("t.stats");
    let good = std::fs::read(&p).unwrap();
    let cases: [(Vec<u8>, &str); 3] = [
        (vec![0x42; 4096], "bad magic"),
        (good[..HEADER_SIZE + 10].to_vec(), "corrupt"),
        (
            {
                let mut b = good.clone();
                b[header::VERSION..header::VERSION + 4].copy_from_slice(&99u32.to_ne_bytes());
                b
            },
            "layout version 99",
        ),
    ];
    for (bytes, want) in cases {
        std::fs::write(&p, &bytes).unwrap();
        let o = tandemstat(&f.dir, &["--json"]);
        assert_eq!(o.status.code(), Some(2), "{want}");
        assert!(stderr(&o).contains(want), "{want}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "nothing misread is printed");
    }
}

#[test]
fn stale_heartbeat_warns_but_prints() {
    let f = fixture("stale", unix_ns() - 10_000_000_000);
    let o = tandemstat(&f.dir, &["--json"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("stale"), "{}", stderr(&o));
    assert!(stderr(&o).contains("10."), "names the age: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["stale"], true);
}

#[test]
fn prometheus_output_parses_with_prometheus_client() {
    let f = fixture("prom", unix_ns());
    let o = tandemstat(&f.dir, &["prometheus"]);
    assert!(o.status.success());
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
             fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
             print(len(fams), sum(len(f.samples) for f in fams))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (cargo xtask setup installs it and prometheus_client)");
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), &o.stdout).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<usize>().unwrap());
    let (families, samples) = (it.next().unwrap(), it.next().unwrap());
    assert!(families >= 10, "{families} families");
    assert!(samples >= 40, "{samples} samples");
}

/// `promtool check metrics` (Debian's prometheus package, which `cargo
/// xtask setup` installs) on `text`: its complaints, empty when clean.
fn promtool_complaints(text: &[u8]) -> String {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs Debian's prometheus package)");
    std::io::Write::write_all(p.stdin.as_mut().unwrap(), text).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("promtool failed ({}): {said}", out.status)
    }
}

#[test]
fn prometheus_output_passes_promtool_and_leaves_instance_to_the_scrape() {
    let f = fixture("promtool", unix_ns());
    let o = tandemstat(&f.dir, &["prometheus"]);
    assert!(o.status.success());
    assert_eq!(promtool_complaints(&o.stdout), "");
    let text = stdout(&o);
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(series.len() >= 40, "{} series", series.len());
    for l in series {
        assert!(
            l.contains("{tandem_instance=\"t\"")
                && !l.contains(",instance=")
                && !l.contains("{instance="),
            "{l}"
        );
    }
}

#[test]
fn watch_prints_per_second_deltas() {
    let f = fixture("watch", unix_ns());
    let stop = Arc::new(AtomicBool::new(false));
    let (seg, slot, st) = (Arc::clone(&f.seg), f.rx0, Arc::clone(&stop));
    let bump = thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            seg.value(slot).fetch_add(1000, Ordering::Relaxed);
            seg.heartbeat(unix_ns());
            thread::sleep(Duration::from_millis(10));
        }
    });
    let o = tandemstat(&f.dir, &["--json", "-w", "0.5", "-c", "2"]);
    stop.store(true, Ordering::Relaxed);
    bump.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let frames: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2);
    for fr in frames {
        let rate = fr["workers"][0]["rx_packets"].as_u64().unwrap();
        // ~1000 per 10 ms; generous bounds for a loaded machine.
        assert!((5_000..=200_000).contains(&rate), "rate {rate}/s");
        // Untouched counters show no movement.
        assert_eq!(fr["workers"][1]["rx_packets"], 0);
    }
}
