//! What every suite shares: the JSON line written for each result, medians and percentiles, and
//! the alternating order of interleaved rounds.
//!
//! A result line is one JSON object:
//! `{"suite":"supervisor","case":"throughput","impl":"plain","metric":"msgs_per_sec","value":1234.5,"unit":"msg/s"}`.
//! A comparison adds a line whose metric ends in `_ratio`, with an impl such as
//! `supervised_vs_plain`.

use std::io::Write as _;
use std::sync::OnceLock;

use crate::BenchError;

/// The one case `--case NAME` asked for; unset runs every case.
static ONLY: OnceLock<String> = OnceLock::new();

/// Runs only the case named `case` from now on (`--case`); a second call keeps the first.
pub fn only(case: String) {
    if let Err(ignored) = ONLY.set(case) {
        eprintln!("cadre-bench: --case given twice; keeping the first, not {ignored:?}");
    }
}

/// Whether the case named `case` is to run.
pub fn selected(case: &str) -> bool {
    ONLY.get().is_none_or(|only| only == case)
}

/// Writes a suite's result lines to stdout.
pub struct Reporter {
    suite: &'static str,
}

impl Reporter {
    /// A reporter for the suite named `suite`.
    pub fn new(suite: &'static str) -> Self {
        Reporter { suite }
    }

    /// Writes one result line. Values in unit `ratio` keep four decimals, others one; a value
    /// that is not finite is written as `null`.
    pub fn emit(
        &self,
        case: &str,
        imp: &str,
        metric: &str,
        value: f64,
        unit: &str,
    ) -> Result<(), BenchError> {
        let value = if !value.is_finite() {
            "null".to_owned()
        } else if unit == "ratio" {
            format!("{value:.4}")
        } else {
            format!("{value:.1}")
        };
        let line = format!(
            "{{\"suite\":{},\"case\":{},\"impl\":{},\"metric\":{},\"value\":{value},\"unit\":{}}}",
            json_str(self.suite),
            json_str(case),
            json_str(imp),
            json_str(metric),
            json_str(unit),
        );
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The median of `values` (the mean of the two middle ones for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q` quantile (0..=1) of sorted `values`, by the nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median of integer samples (sorts them in place); NaN when empty.
pub fn p50(samples: &mut [u64]) -> f64 {
    samples.sort_unstable();
    let n = samples.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => samples[n / 2] as f64,
        _ => (samples[n / 2 - 1] as f64 + samples[n / 2] as f64) / 2.0,
    }
}

/// Whether the baseline runs first in round `round`: rounds alternate the order, so neither
/// implementation always runs on a warmer (or more fragmented) process.
pub fn baseline_first(round: usize) -> bool {
    round.is_multiple_of(2)
}

/// Nanoseconds in `d`, saturating.
pub fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// VmRSS of this process in bytes.
pub fn rss_bytes() -> Result<u64, BenchError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Check("no VmRSS line in /proc/self/status".into()))
}
