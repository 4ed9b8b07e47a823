//! What `deploy/` ships for operators, checked with the tools they use:
//! the Prometheus alert rules (`promtool check rules`, and their unit
//! tests with `promtool test rules`), the Grafana dashboard, and the
//! systemd units (`systemd-analyze verify`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (cargo xtask setup installs it)"));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let (ok, out) = run(Command::new("promtool").current_dir(&dir).args([
        "check",
        "rules",
        "tandem.rules.yml",
    ]));
    assert!(ok && out.contains("SUCCESS: 12 rules found"), "{out}");
    let (ok, out) = run(Command::new("promtool").current_dir(&dir).args([
        "test",
        "rules",
        "tandem.rules.test.yml",
    ]));
    assert!(
        ok && out.contains("SUCCESS") && !out.contains("FAILED"),
        "{out}"
    );
}

/// The `tandem_*` names in `text`, but for the instance label.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tandem_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let starts_word =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let name = &text[start..end];
        if starts_word && name != "tandem_instance" && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn the_rules_and_the_dashboard_name_only_metrics_tandem_exports() {
    for file in [
        "prometheus/tandem.rules.yml",
        "prometheus/tandem.rules.test.yml",
        "grafana/tandem.json",
    ] {
        let text = std::fs::read_to_string(deploy().join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 10, "{file}: {names:?}");
        let unknown: Vec<_> = names
            .iter()
            .filter(|n| !tandem_tools::prom::is_family(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics tandem does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_per_panel() {
    let text = std::fs::read_to_string(deploy().join("grafana/tandem.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "tandem-pair");
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| e.contains("tandem_"))),
            "{}",
            p["title"]
        );
    }
}

/// `unit` with its binaries' install paths pointed at the built ones
/// (verify checks that they are executable), verified as instance
/// `edge1`.
fn verify(unit: &str) -> (bool, String) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tandemstat"));
    let tandemd = bin.with_file_name("tandemd");
    let tandemd = if tandemd.exists() {
        tandemd
    } else {
        PathBuf::from("/bin/true")
    };
    let text = std::fs::read_to_string(deploy().join(unit))
        .unwrap()
        .replace("/usr/local/sbin/tandemd", tandemd.to_str().unwrap())
        .replace("/usr/local/bin/tandemstat", bin.to_str().unwrap())
        .replace("/usr/local/bin/tandemctl", env!("CARGO_BIN_EXE_tandemctl"));
    let dir = std::env::temp_dir().join(format!("tandem-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(unit.replace("@.", "@edge1."));
    std::fs::write(&path, text).unwrap();
    let r = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn the_systemd_units_verify() {
    for unit in ["tandemd@.service", "tandemstat-serve@.service"] {
        let (ok, out) = verify(unit);
        assert!(ok && out.trim().is_empty(), "{unit}: {out}");
    }
}
