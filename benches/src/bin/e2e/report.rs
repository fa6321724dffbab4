//! Measurements, the JSON lines and the Markdown table.

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::Outcome;
use crate::tunnel::Row;
use crate::{Options, Test};

/// One test through one row in one run.
pub struct Measurement {
    /// Run number, from 1.
    pub run: u32,
    /// The row.
    pub row: Row,
    /// The test.
    pub test: Test,
    /// What was measured, or why it failed (lost, corrupted, stalled data...).
    pub result: Result<Outcome, String>,
    /// Why the row could not run (software missing).
    pub missing: Option<String>,
    /// CPU seconds of the tunnel's processes.
    pub cpu_seconds: Option<f64>,
    /// Sum of the tunnel processes' peak RSS, KiB.
    pub peak_rss_kib: Option<u64>,
    /// The relay's forwarded and dropped HTTP messages.
    pub relay: Option<(u64, u64)>,
}

impl Measurement {
    /// An empty measurement.
    pub fn new(run: u32, row: Row, test: Test) -> Measurement {
        Measurement {
            run,
            row,
            test,
            result: Err("not run".into()),
            missing: None,
            cpu_seconds: None,
            peak_rss_kib: None,
            relay: None,
        }
    }

    fn mb_per_s(&self) -> Option<f64> {
        let o = self.result.as_ref().ok()?;
        (self.test != Test::Ping && o.seconds > 0.0).then(|| o.bytes as f64 / o.seconds / 1e6)
    }

    fn percentile_us(&self, p: f64) -> Option<f64> {
        let o = self.result.as_ref().ok()?;
        if o.rtts_us.is_empty() {
            return None;
        }
        let i = ((o.rtts_us.len() as f64 * p).ceil() as usize).clamp(1, o.rtts_us.len()) - 1;
        Some(o.rtts_us[i])
    }

    /// The figure the table compares: MB/s, or the ping-pong's p50 in µs.
    fn figure(&self) -> Option<f64> {
        match self.test {
            Test::Ping => self.percentile_us(0.5),
            _ => self.mb_per_s(),
        }
    }

    fn cpu_per_gb(&self) -> Option<f64> {
        let o = self.result.as_ref().ok()?;
        (self.test != Test::Ping && o.bytes > 0)
            .then(|| self.cpu_seconds.map(|c| c / (o.bytes as f64 / 1e9)))?
    }

    /// One line for the progress log.
    pub fn summary(&self) -> String {
        if let Some(why) = &self.missing {
            return format!("MISSING: {why}");
        }
        match (&self.result, self.test) {
            (Err(e), _) => format!("FAILED: {e}"),
            (Ok(_), Test::Ping) => format!(
                "p50 {:.0} us, p99 {:.0} us",
                self.percentile_us(0.5).unwrap_or(0.0),
                self.percentile_us(0.99).unwrap_or(0.0)
            ),
            (Ok(o), _) => format!(
                "{:.1} MB/s ({} bytes in {:.2} s){}",
                self.mb_per_s().unwrap_or(0.0),
                o.bytes,
                o.seconds,
                self.cpu_per_gb()
                    .map(|c| format!(", {c:.2} CPU s/GB"))
                    .unwrap_or_default()
            ),
        }
    }

    /// The measurement as one JSON object.
    pub fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".into(), |v| format!("{v:.3}"));
        let text = |v: Option<&str>| v.map_or("null".into(), json_string);
        let ok = self.result.as_ref().ok();
        format!(
            "{{\"run\":{},\"row\":{},\"label\":{},\"test\":{},\"bytes\":{},\"seconds\":{},\
             \"mb_per_s\":{},\"p50_us\":{},\"p99_us\":{},\"cpu_seconds\":{},\"cpu_s_per_gb\":{},\
             \"peak_rss_kib\":{},\"relay_forwarded\":{},\"relay_dropped\":{},\"intact\":{},\
             \"error\":{},\"missing\":{}}}",
            self.run,
            json_string(self.row.key()),
            json_string(self.row.label()),
            json_string(&self.test.key()),
            ok.map_or("null".into(), |o| o.bytes.to_string()),
            num(ok.map(|o| o.seconds)),
            num(self.mb_per_s()),
            num(self.percentile_us(0.5)),
            num(self.percentile_us(0.99)),
            num(self.cpu_seconds),
            num(self.cpu_per_gb()),
            self.peak_rss_kib.map_or("null".into(), |v| v.to_string()),
            self.relay.map_or("null".into(), |r| r.0.to_string()),
            self.relay.map_or("null".into(), |r| r.1.to_string()),
            self.missing.is_none() && self.result.is_ok(),
            text(self.result.as_ref().err().map(String::as_str)),
            text(self.missing.as_deref()),
        )
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Median figure of `row` in `test` over the runs that succeeded.
fn median_of(all: &[Measurement], row: Row, test: Test) -> Option<f64> {
    let mut v: Vec<f64> = all
        .iter()
        .filter(|m| m.row == row && m.test == test)
        .filter_map(Measurement::figure)
        .collect();
    median(&mut v)
}

fn test_label(test: Test, opts: &Options) -> String {
    let mib = opts.mib;
    match test {
        Test::Up => format!("bulk up, {mib} MiB"),
        Test::Down => format!("bulk down, {mib} MiB"),
        Test::Bidi => format!("bidi, {mib} MiB each way"),
        Test::Ping => format!("ping-pong 64 B × {}", opts.pings.1),
        Test::Streams => format!("{} streams up, {mib} MiB total", opts.streams),
        Test::Loss(p) => format!("loss {p} %, bidi {} MiB each way", opts.loss_mib),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

/// The Markdown report: the machine, then one table row per row and test.
pub fn markdown(opts: &Options, all: &[Measurement], took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## holdwire end-to-end benchmark\n");
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(
        s,
        "- {} run(s){}, rows interleaved within each run; took {:.0} s; stall timeout {:?}",
        opts.runs,
        if opts.quick { " (--quick)" } else { "" },
        took.as_secs_f64(),
        opts.stall
    );
    let _ = writeln!(
        s,
        "- figures: MB/s = 10^6 bytes of verified payload per second (both directions for \
         bidi and loss); ping-pong: p50 round trip (p99 in brackets), lower is better"
    );
    let _ = writeln!(
        s,
        "- CPU s/GB and peak RSS: the tunnel's own processes (client + server endpoints; not \
         proxies, relay or load generator)\n"
    );
    let _ = writeln!(
        s,
        "| test | row | median | range | vs raw TCP | vs httptunnel | CPU s/GB | peak RSS | integrity |"
    );
    let _ = writeln!(s, "|---|---|---:|---|---:|---:|---:|---:|---|");
    for &test in &opts.tests {
        let raw = median_of(all, Row::Raw, test);
        let lossless = median_of(all, Row::Smol, Test::Loss(0));
        let ht = median_of(all, Row::Ht, test);
        for &row in &opts.rows {
            let ms: Vec<&Measurement> = all
                .iter()
                .filter(|m| m.row == row && m.test == test)
                .collect();
            if ms.is_empty() {
                continue;
            }
            let label = test_label(test, opts);
            if let Some(why) = ms.iter().find_map(|m| m.missing.as_ref()) {
                let _ = writeln!(
                    s,
                    "| {label} | {} | missing | | | | | | {why} |",
                    row.label()
                );
                continue;
            }
            let mut figures: Vec<f64> = ms.iter().filter_map(|m| m.figure()).collect();
            let mid = median(&mut figures);
            let (unit, digits) = if test == Test::Ping {
                (" µs", 0)
            } else {
                (" MB/s", 1)
            };
            let fmt = |v: f64| format!("{v:.digits$}");
            let median_text = match mid {
                Some(m) if test == Test::Ping => {
                    let mut p99: Vec<f64> =
                        ms.iter().filter_map(|m| m.percentile_us(0.99)).collect();
                    format!(
                        "{}{unit} ({})",
                        fmt(m),
                        median(&mut p99).map_or("—".into(), fmt)
                    )
                }
                Some(m) => format!("{}{unit}", fmt(m)),
                None => "—".into(),
            };
            let range = match (figures.first(), figures.last()) {
                (Some(a), Some(b)) if figures.len() > 1 => format!("{}–{}", fmt(*a), fmt(*b)),
                _ => "".into(),
            };
            let own_base = match test {
                Test::Loss(_) => median_of(all, row, Test::Loss(0)).or(lossless),
                _ => raw,
            };
            let vs_raw = if row == Row::Raw {
                "1.00×".into()
            } else {
                ratio(mid, own_base)
            };
            let vs_raw = match test {
                Test::Loss(_) if mid.is_some() => format!("{vs_raw} of 0 %"),
                _ => vs_raw,
            };
            let vs_ht = if row == Row::Ht {
                "1.00×".into()
            } else {
                ratio(mid, ht)
            };
            let mut cpu: Vec<f64> = ms.iter().filter_map(|m| m.cpu_per_gb()).collect();
            let cpu = median(&mut cpu).map_or("—".into(), |c| format!("{c:.2}"));
            let rss = ms
                .iter()
                .filter_map(|m| m.peak_rss_kib)
                .max()
                .map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            let failed: Vec<&&Measurement> = ms.iter().filter(|m| m.result.is_err()).collect();
            let integrity = match failed.first() {
                None => format!("intact {}/{}", ms.len(), ms.len()),
                Some(m) => format!(
                    "FAILED {}/{}: {}",
                    failed.len(),
                    ms.len(),
                    m.result
                        .as_ref()
                        .err()
                        .map_or("", |e| e.as_str())
                        .replace('|', "/")
                ),
            };
            let _ = writeln!(
                s,
                "| {label} | {} | {median_text} | {range} | {vs_raw} | {vs_ht} | {cpu} | {rss} | {integrity} |",
                row.label()
            );
        }
    }
    let _ = writeln!(
        s,
        "\nRows: \"holdwire std\" runs holdwire-std's library (`Listener`, `Stream::connect`) \
         in this binary's hidden `__std-server`/`__std-client` modes; \"holdwire CLI (smol)\" \
         runs the `holdwire` binary (`server --no-auth`, `client --listen`). The loss sweep \
         puts holdwire-smol's lossy relay (`holdwire_smol::relay`) between client and server; \
         \"vs httptunnel\" compares with httptunnel, defaults, direct, in the same test."
    );
    s
}

/// CPU model, cores, kernel and load average.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}, load average at the end {load}")
}
