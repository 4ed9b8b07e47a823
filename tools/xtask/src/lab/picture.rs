//! A failover's timeline as a picture (PNG): every held TCP connection's
//! answered echoes against time, the echo rates of all of them and of
//! the UDP stream, and the fault, the VIP move and the recovery marked.
//!
//! The data is what `xtask traffic hold --timeline FILE` wrote: per
//! connection (and for the UDP stream) the ms, since the run's start, at
//! which each echo came back. Text is drawn with DejaVu Sans (Debian's
//! fonts-dejavu-core, which `cargo xtask setup` installs).

use std::{path::Path, sync::OnceLock};

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Width of a liveness mark and of a rate bin.
const MARK_MS: u32 = 20;
const RATE_MS: u32 = 50;
/// A gap between two echoes (sent every 10 ms) this long is an outage.
const OUTAGE_MS: i64 = 100;

/// One run's echoes (see the module's notes).
pub struct Timeline {
    pub start_unix_ms: u64,
    pub tcp: Vec<Vec<u32>>,
    pub udp: Vec<u32>,
}

impl Timeline {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the timeline {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let list = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Self {
            start_unix_ms: v["start_unix_ms"]
                .as_u64()
                .context("timeline: no start_unix_ms")?,
            tcp: v["tcp"]
                .as_array()
                .context("timeline: no tcp")?
                .iter()
                .map(list)
                .collect(),
            udp: list(&v["udp"]),
        })
    }

    /// Ms since the start of `unix_ms`.
    pub fn at(&self, unix_ms: u64) -> i64 {
        i64::try_from(unix_ms).unwrap_or(i64::MAX) - i64::try_from(self.start_unix_ms).unwrap_or(0)
    }

    /// The recovery (ms since the start): when the last connection that
    /// answered before `fault_ms` answered again after its outage, the
    /// longest gap between two of its echoes that ends after the fault
    /// (echoes in flight when the fault struck land inside it). `None` if
    /// a connection never answered after the fault, or if none went
    /// [`OUTAGE_MS`] without an answer (nothing to recover from).
    pub fn recovered_ms(&self, fault_ms: i64) -> Option<i64> {
        let (mut last, mut worst) = (None, 0);
        for e in &self.tcp {
            let e: Vec<i64> = e.iter().map(|&t| i64::from(t)).collect();
            if !e.iter().any(|&t| t < fault_ms) {
                continue;
            }
            let w = e
                .windows(2)
                .filter(|w| w[1] > fault_ms)
                .max_by_key(|w| w[1] - w[0])?;
            worst = worst.max(w[1] - w[0]);
            last = last.max(Some(w[1]));
        }
        last.filter(|_| worst >= OUTAGE_MS)
    }
}

/// A moment marked on the picture.
pub struct Mark {
    /// Ms since the timeline's start.
    pub at_ms: i64,
    pub label: String,
    pub color: RGBColor,
}

/// The marks of a run: the fault (`(Unix ms, label)`, time zero), the
/// VIPs' arrival on node `to` (Unix ms) if they moved, and the recovery
/// if there was an outage to recover from.
pub fn marks(t: &Timeline, fault: (u64, String), moved: Option<u64>, to: &str) -> Vec<Mark> {
    let at = t.at(fault.0);
    let mut marks = vec![Mark {
        at_ms: at,
        label: fault.1,
        color: RGBColor(200, 30, 30),
    }];
    if let Some(m) = moved {
        marks.push(Mark {
            at_ms: t.at(m),
            label: format!("VIPs on node {to}"),
            color: RGBColor(30, 80, 200),
        });
    }
    if let Some(r) = t.recovered_ms(at) {
        marks.push(Mark {
            at_ms: r,
            label: "every connection answering again".into(),
            color: RGBColor(20, 130, 50),
        });
    }
    marks
}

fn font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT)
            .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Vec::leak(bytes))
            .map_err(|_| format!("{FONT}: not a font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws `t` with `marks` (the first is the fault: time 0) under `title`
/// into the PNG `out`.
#[expect(clippy::cast_precision_loss, reason = "plot coordinates")]
pub fn draw(t: &Timeline, marks: &[Mark], title: &str, out: &Path) -> Result<()> {
    font()?;
    let zero = marks.first().map_or(0, |m| m.at_ms);
    let secs = |ms: i64| (ms - zero) as f64 / 1000.0;
    let end = t
        .tcp
        .iter()
        .flatten()
        .chain(&t.udp)
        .copied()
        .max()
        .unwrap_or(1000);
    let (x0, x1) = (secs(0), secs(i64::from(end)) + 0.1);
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", out.display());
    let root = BitMapBackend::new(out, (1400, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 24))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(540);

    // Every connection's liveness: a mark per 20 ms with an echo.
    let n = t.tcp.len().max(1);
    let mut live = ChartBuilder::on(&top)
        .caption(
            format!(
                "each of {n} TCP connections: green while its echoes (one per 10 ms) come back"
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, 0f64..n as f64)
        .map_err(|e| err(&e))?;
    live.configure_mesh()
        .disable_mesh()
        .x_desc("seconds since the fault")
        .y_desc("connection")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let green = RGBColor(30, 140, 60);
    for (i, echoes) in t.tcp.iter().enumerate() {
        // Runs of consecutive bins: one rectangle each.
        let mut bins: Vec<u32> = echoes.iter().map(|&e| e / MARK_MS).collect();
        bins.dedup();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for b in bins {
            match runs.last_mut() {
                Some((_, hi)) if *hi + 1 >= b => *hi = b,
                _ => runs.push((b, b)),
            }
        }
        live.draw_series(runs.into_iter().map(|(lo, hi)| {
            Rectangle::new(
                [
                    (secs(i64::from(lo * MARK_MS)), i as f64 + 0.1),
                    (secs(i64::from((hi + 1) * MARK_MS)), i as f64 + 0.9),
                ],
                green.filled(),
            )
        }))
        .map_err(|e| err(&e))?;
    }
    for m in marks {
        live.draw_series(LineSeries::new(
            [(secs(m.at_ms), 0.0), (secs(m.at_ms), n as f64)],
            m.color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    }

    // The rates, all TCP echoes' and the UDP stream's, each as a share
    // of its median rate before the fault (the last bins, still filling
    // as the run stops, aside).
    let rate = |echoes: &mut dyn Iterator<Item = u32>| -> (Vec<(f64, f64)>, f64) {
        let mut bins = vec![0u32; (end / RATE_MS + 1) as usize];
        for e in echoes {
            bins[(e / RATE_MS) as usize] += 1;
        }
        let before: Vec<u32> = {
            let upto = usize::try_from(zero.max(0)).unwrap_or(0) / RATE_MS as usize;
            let mut b: Vec<u32> = bins.iter().take(upto).skip(2).copied().collect();
            b.sort_unstable();
            b
        };
        let steady = f64::from(before.get(before.len() / 2).copied().unwrap_or(1).max(1));
        let points = bins
            .iter()
            .enumerate()
            .map(|(b, &c)| {
                (
                    secs(i64::from(b as u32 * RATE_MS + RATE_MS / 2)),
                    f64::from(c) * 100.0 / steady,
                )
            })
            .collect();
        (points, steady * 1000.0 / f64::from(RATE_MS))
    };
    let (tcp, tcp_steady) = rate(&mut t.tcp.iter().flatten().copied());
    let (udp, udp_steady) = rate(&mut t.udp.iter().copied());
    let top_rate = 160.0;
    let mut rates = ChartBuilder::on(&bottom)
        .caption(
            format!(
                "answered echoes, % of the rate before the fault (50 ms bins; TCP {tcp_steady:.0}/s, \
                 UDP {udp_steady:.0}/s)"
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, 0f64..top_rate)
        .map_err(|e| err(&e))?;
    rates
        .configure_mesh()
        .x_desc("seconds since the fault")
        .y_desc("% of the rate before")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    rates
        .draw_series(LineSeries::new(tcp, green.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("TCP, all connections")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], green.stroke_width(2)));
    let purple = RGBColor(120, 60, 170);
    rates
        .draw_series(LineSeries::new(udp, purple.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("UDP stream (one per 5 ms)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], purple.stroke_width(2)));
    for (k, m) in marks.iter().enumerate() {
        let x = secs(m.at_ms);
        rates
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, top_rate)],
                m.color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        // Labels stacked so that marks close in time stay readable.
        let y = top_rate * (0.97 - 0.07 * k as f64);
        rates
            .draw_series(std::iter::once(Text::new(
                format!(" {} ({:+.3} s)", m.label, x),
                (x, y),
                ("sans-serif", 15).into_font().color(&m.color),
            )))
            .map_err(|e| err(&e))?;
    }
    rates
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_when_the_last_connection_answers_again() {
        let t = Timeline {
            start_unix_ms: 1000,
            tcp: vec![vec![10, 20, 105, 400, 410], vec![15, 25, 300, 310], vec![]],
            udp: vec![],
        };
        assert_eq!(t.at(1100), 100);
        assert_eq!(t.recovered_ms(100), Some(400));
        // No outage: nothing to mark.
        let calm = Timeline {
            start_unix_ms: 0,
            tcp: vec![vec![10, 20, 30, 40]],
            udp: vec![],
        };
        assert_eq!(calm.recovered_ms(25), None);
        // A connection that never answered again: no recovery.
        let t = Timeline {
            tcp: vec![vec![10, 20]],
            ..t
        };
        assert_eq!(t.recovered_ms(100), None);
    }
}
