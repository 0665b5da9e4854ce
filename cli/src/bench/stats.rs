//! Latency samples, percentiles, medians over repetitions, and peak RSS.

use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Samples {
    pub authorize_us: Vec<u64>,
    pub settle_us: Vec<u64>,
    pub transactions: u64,
    pub failures: u64,
    pub first_error: Option<String>,
}

impl Samples {
    pub fn fail(&mut self, error: &anyhow::Error) {
        self.failures += 1;
        self.first_error.get_or_insert_with(|| format!("{error:#}"));
    }

    pub fn merge(&mut self, other: Samples) {
        self.authorize_us.extend(other.authorize_us);
        self.settle_us.extend(other.settle_us);
        self.transactions += other.transactions;
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// One repetition's figures.
    pub fn measure(mut self, elapsed_s: f64) -> Measure {
        self.authorize_us.sort_unstable();
        self.settle_us.sort_unstable();
        Measure {
            txn_per_s: self.transactions as f64 / elapsed_s.max(f64::EPSILON),
            authorize_us: Percentiles::of(&self.authorize_us),
            settle_us: Percentiles::of(&self.settle_us),
            failures: self.failures,
            transactions: self.transactions,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

impl Percentiles {
    pub fn of(sorted: &[u64]) -> Self {
        Self {
            p50: percentile(sorted, 0.50),
            p99: percentile(sorted, 0.99),
            p999: percentile(sorted, 0.999),
        }
    }
}

fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted.get(rank).copied().unwrap_or(0)
}

pub struct Measure {
    pub txn_per_s: f64,
    pub authorize_us: Percentiles,
    pub settle_us: Percentiles,
    pub failures: u64,
    /// Transactions settled (authorize and settle both answered).
    pub transactions: u64,
}

/// What a row's SQLite ledgers cost, measured after its traffic (creditgate rows on
/// SQLite only).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LedgerFigures {
    /// Bytes of the ledgers' files (log and views) once closed, over the transactions of
    /// the row; the grants that fund the tenants are counted in the bytes, not as
    /// transactions.
    pub disk_bytes_per_txn: f64,
    /// The longest a durable batch waited to be applied to the views during the row.
    pub views_lag_worst_ms: f64,
    /// `Meter::open` of a ledger after the row (the slower of the two): lock, snapshot,
    /// replay, the policy from the compile cache.
    pub restart_ms: f64,
}

/// One line of the table: each figure is the median of the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub txn_per_s: f64,
    /// Throughput of each repetition, in order.
    pub repetitions_txn_per_s: Vec<f64>,
    pub authorize_p50_us: u64,
    pub authorize_p99_us: u64,
    pub authorize_p999_us: u64,
    pub settle_p50_us: u64,
    pub settle_p99_us: u64,
    pub settle_p999_us: u64,
    /// Peak resident memory of this process during the row (creditgate rows only).
    pub rss_bytes: Option<u64>,
    /// Decisions per store commit, on average (creditgate rows only): what group
    /// commit gathered.
    pub decisions_per_commit: Option<f64>,
    pub ledger: Option<LedgerFigures>,
    pub failures: u64,
    /// Why the row could not run, when it could not.
    pub error: Option<String>,
}

impl Row {
    pub fn from_measures(name: String, measures: &[Measure], rss_bytes: Option<u64>) -> Self {
        let median_u64 = |pick: &dyn Fn(&Measure) -> u64| {
            let mut values: Vec<u64> = measures.iter().map(pick).collect();
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(0)
        };
        let mut rates: Vec<f64> = measures.iter().map(|measure| measure.txn_per_s).collect();
        let repetitions_txn_per_s = rates.clone();
        rates.sort_by(f64::total_cmp);
        Self {
            name,
            txn_per_s: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
            repetitions_txn_per_s,
            authorize_p50_us: median_u64(&|m| m.authorize_us.p50),
            authorize_p99_us: median_u64(&|m| m.authorize_us.p99),
            authorize_p999_us: median_u64(&|m| m.authorize_us.p999),
            settle_p50_us: median_u64(&|m| m.settle_us.p50),
            settle_p99_us: median_u64(&|m| m.settle_us.p99),
            settle_p999_us: median_u64(&|m| m.settle_us.p999),
            rss_bytes,
            decisions_per_commit: None,
            ledger: None,
            failures: measures.iter().map(|measure| measure.failures).sum(),
            error: None,
        }
    }

    pub fn unavailable(name: String, error: &anyhow::Error) -> Self {
        Self {
            name,
            txn_per_s: 0.0,
            repetitions_txn_per_s: Vec::new(),
            authorize_p50_us: 0,
            authorize_p99_us: 0,
            authorize_p999_us: 0,
            settle_p50_us: 0,
            settle_p99_us: 0,
            settle_p999_us: 0,
            rss_bytes: None,
            decisions_per_commit: None,
            ledger: None,
            failures: 0,
            error: Some(format!("{error:#}")),
        }
    }
}

/// Gives the memory the allocator holds free back to the OS (glibc's `malloc_trim`; a
/// no-op elsewhere), so that a resident-memory figure taken after it counts what is in
/// use, not what an earlier phase freed: compiling a large component (CPython's) frees
/// hundreds of MiB that the allocator's arenas would otherwise keep resident.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::malloc_trim(0);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    // SAFETY: the declaration is glibc's (`int malloc_trim(size_t pad)`), and the
    // function may be called from any thread at any time: it takes each arena's lock and
    // releases only memory that is free.
    unsafe extern "C" {
        pub safe fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
}

/// Starts a new peak-RSS window for this process (Linux: `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident set of this process since the last reset, if the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// The resident set of this process now, if the OS tells.
pub fn resident_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
