//! ipmpstat-style output: `-o FIELD,...` selection, human tables with `--`
//! for empty fields, and `-P` parsable lines (no header, ':' separated,
//! ':' and '\' escaped when more than one field is printed).

use tandem_control::stats::{LinkState, XdpAttach};

use crate::{
    model::Snapshot,
    view::{link_str, role_str},
};

/// Errors in the output options.
#[derive(Debug, PartialEq, Eq)]
pub enum FieldError {
    Unknown {
        field: String,
        valid: Vec<&'static str>,
    },
    Empty,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown { field, valid } => write!(
                f,
                "unknown field {field:?}; valid fields: {} (or all)",
                valid.join(", ")
            ),
            Self::Empty => write!(f, "-o needs at least one field"),
        }
    }
}

/// Resolves `-o` (case-insensitive, comma-separated, `all`) against the
/// mode's fields; `None` selects every field.
pub fn select(spec: Option<&str>, fields: &[&'static str]) -> Result<Vec<usize>, FieldError> {
    let Some(spec) = spec else {
        return Ok((0..fields.len()).collect());
    };
    let mut out = Vec::new();
    for raw in spec.split(',') {
        let f = raw.trim();
        if f.is_empty() {
            continue;
        }
        if f.eq_ignore_ascii_case("all") {
            out.extend(0..fields.len());
            continue;
        }
        match fields.iter().position(|x| x.eq_ignore_ascii_case(f)) {
            Some(i) => out.push(i),
            None => {
                return Err(FieldError::Unknown {
                    field: f.to_owned(),
                    valid: fields.to_vec(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(FieldError::Empty);
    }
    Ok(out)
}

/// One `-P` line: fields joined by ':', with ':' and '\' escaped when more
/// than one field is printed (as ipmpstat does).
pub fn parsable_line(values: &[String]) -> String {
    if values.len() == 1 {
        return values[0].clone();
    }
    values
        .iter()
        .map(|v| {
            let mut e = String::with_capacity(v.len());
            for c in v.chars() {
                if c == ':' || c == '\\' {
                    e.push('\\');
                }
                e.push(c);
            }
            e
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Renders rows of a mode as a human table or as parsable lines.
pub fn render(
    fields: &[&'static str],
    selected: &[usize],
    rows: &[Vec<String>],
    parsable: bool,
) -> String {
    let mut out = String::new();
    if parsable {
        for r in rows {
            let vals: Vec<String> = selected.iter().map(|i| r[*i].clone()).collect();
            out.push_str(&parsable_line(&vals));
            out.push('\n');
        }
        return out;
    }
    let shown = |v: &String| {
        if v.is_empty() {
            "--".to_owned()
        } else {
            v.clone()
        }
    };
    let widths: Vec<usize> = selected
        .iter()
        .map(|i| {
            rows.iter()
                .map(|r| shown(&r[*i]).len())
                .chain([fields[*i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l
    };
    out.push_str(&line(
        selected.iter().map(|i| fields[*i].to_owned()).collect(),
    ));
    out.push('\n');
    for r in rows {
        out.push_str(&line(selected.iter().map(|i| shown(&r[*i])).collect()));
        out.push('\n');
    }
    out
}

/// Interface mode fields (-i).
pub const IFACE_FIELDS: [&str; 7] = [
    "INTERFACE",
    "ACTIVE",
    "GROUP",
    "FLAGS",
    "LINK",
    "PROBE",
    "STATE",
];

/// Interface mode rows. GROUP is the instance (its redundancy group);
/// FLAGS: `s` the node is standby (not forwarding), `d` link down, `i`
/// no XDP attached; PROBE is the probe state (`disabled` if not probed);
/// STATE is `failed` on a link down or failed probes.
pub fn iface_rows(s: &Snapshot) -> Vec<Vec<String>> {
    let Some(st) = &s.state else {
        return Vec::new();
    };
    let rg = crate::redundancy::Rg::read(s);
    st.interfaces
        .iter()
        .map(|i| {
            let attached = i.xdp != XdpAttach::None;
            let up = i.link == LinkState::Up;
            let active = st.forward && attached && i.link != LinkState::Down;
            let mut flags = String::new();
            if !st.forward {
                flags.push('s');
            }
            if i.link == LinkState::Down {
                flags.push('d');
            }
            if !attached {
                flags.push('i');
            }
            let probe = rg
                .as_ref()
                .map_or("disabled", |r| crate::redundancy::probe_state(r, &i.name));
            let state = if !attached {
                "offline"
            } else if i.link == LinkState::Down || probe == "failed" {
                "failed"
            } else if up {
                "ok"
            } else {
                "unknown"
            };
            vec![
                i.name.clone(),
                if active { "yes" } else { "no" }.to_owned(),
                s.instance.clone(),
                flags,
                link_str(i.link).to_owned(),
                probe.to_owned(),
                state.to_owned(),
            ]
        })
        .collect()
}

/// Rows as JSON objects keyed by the selected fields in lower case.
pub fn rows_json(
    fields: &[&'static str],
    selected: &[usize],
    rows: &[Vec<String>],
) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::Value::Object(
                    selected
                        .iter()
                        .map(|i| (fields[*i].to_ascii_lowercase(), r[*i].clone().into()))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// The role of each interface, for JSON output of `-i`.
pub fn iface_json(s: &Snapshot, selected: &[usize]) -> serde_json::Value {
    let rows = iface_rows(s);
    let roles: Vec<&str> = s
        .state
        .iter()
        .flat_map(|st| st.interfaces.iter().map(|i| role_str(i.role)))
        .collect();
    serde_json::Value::Array(
        rows.iter()
            .zip(roles)
            .map(|(r, role)| {
                let mut o = serde_json::Map::new();
                for i in selected {
                    o.insert(IFACE_FIELDS[*i].to_ascii_lowercase(), r[*i].clone().into());
                }
                o.insert("role".into(), role.into());
                serde_json::Value::Object(o)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_is_case_insensitive_and_ordered() {
        let f = ["INTERFACE", "STATE", "LINK"];
        assert_eq!(select(Some("state,Interface"), &f).unwrap(), vec![1, 0]);
        assert_eq!(select(Some("ALL"), &f).unwrap(), vec![0, 1, 2]);
        assert_eq!(select(None, &f).unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn select_rejects_unknown_and_empty() {
        let f = ["INTERFACE", "STATE"];
        let e = select(Some("interface,bogus"), &f).unwrap_err();
        assert!(e.to_string().contains("\"bogus\""), "{e}");
        assert!(e.to_string().contains("INTERFACE, STATE"), "{e}");
        assert_eq!(select(Some(" , "), &f), Err(FieldError::Empty));
    }

    #[test]
    fn parsable_escapes_colon_and_backslash_only_with_several_fields() {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(parsable_line(&v(&["in0", "ok"])), "in0:ok");
        assert_eq!(parsable_line(&v(&["a:b", "c\\d", ""])), "a\\:b:c\\\\d:");
        assert_eq!(parsable_line(&v(&["a:b"])), "a:b");
    }

    #[test]
    fn human_table_uses_double_hyphen_for_empty_fields() {
        let f = ["INTERFACE", "FLAGS"];
        let rows = vec![vec!["in0".to_owned(), String::new()]];
        let t = render(&f, &[0, 1], &rows, false);
        assert_eq!(t, "INTERFACE  FLAGS\nin0        --\n");
        let p = render(&f, &[0, 1], &rows, true);
        assert_eq!(p, "in0:\n");
    }
}
