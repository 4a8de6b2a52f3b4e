//! One measurement and the figures the summaries print.

use crate::system::DISTURBED;

/// What one tool did in one run.
#[derive(Clone, Debug)]
pub(crate) struct Measure {
    pub(crate) tool: String,
    pub(crate) secs: f64,
    pub(crate) bytes: u64,
    pub(crate) files: u64,
    /// CPU seconds (user + system) of every process of the tool.
    pub(crate) cpu: f64,
    /// CPU seconds of everything else on the machine during the timed run (other users,
    /// kernel threads such as writeback).
    pub(crate) others: f64,
    /// Peak resident memory of the source and target daemons, in MiB (Tidepool only).
    pub(crate) rss: Option<(f64, f64)>,
    /// Bytes read from and written to the data's disk during the timed run.
    pub(crate) disk: Option<(u64, u64)>,
    pub(crate) note: String,
}

impl Measure {
    pub(crate) fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }

    pub(crate) fn files_s(&self) -> f64 {
        self.files as f64 / self.secs
    }

    /// Whether other processes used more than [`DISTURBED`] of the machine's CPUs during
    /// the timed run.
    pub(crate) fn disturbed(&self) -> bool {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        self.others > DISTURBED * cpus * self.secs
    }

    pub(crate) fn line(&self) -> String {
        let disk = match self.disk {
            Some((r, w)) => format!("device read {:>5.0} MB, written {:>5.0} MB", r as f64 / 1e6, w as f64 / 1e6),
            None => "disk n/a".into(),
        };
        format!(
            "{:<22} {:>8.2} s {:>8.1} MB/s {:>8.0} files/s  cpu {:>6.1} s (others {:>5.1} s)  {disk}  {}",
            self.tool,
            self.secs,
            self.mb_s(),
            self.files_s(),
            self.cpu,
            self.others,
            self.note
        )
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn list(v: &[f64], digits: usize) -> String {
    v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(", ")
}

pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{b} bytes"),
    }
}
