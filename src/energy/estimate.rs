//! Estimated CPU and RAM energy for machines without a readable counter.
//!
//! CPU: CodeCarbon's fallback puts the package at TDP x 0.5 (85 W TDP when the model is unknown,
//! so 42.5 W). We spread that over the machine's logical cores and charge this process for the
//! CPU time it used: energy = CPU seconds (utime + stime of all threads, /proc/self/stat) x
//! (package W / logical cores). Unlike a wall-clock x package estimate, an idle wait costs
//! nothing and other processes are not charged to us.
//!
//! RAM: 3 W per 8 GiB (CodeCarbon's figure) of this process's resident memory
//! (/proc/self/statm), integrated over time by trapezoids between readings.
//!
//! Both readers are traits so tests inject known CPU times and memory sizes.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::host::GIB;
use super::reread::RereadFile;
use super::{Component, EnergyError, Meter, Reading, SourceKind};

/// TDP assumed when the CPU model's TDP is unknown (CodeCarbon's default).
pub const DEFAULT_TDP_W: f64 = 85.0;
/// Fraction of TDP a busy package is assumed to draw (CodeCarbon's 50%).
pub const TDP_FRACTION: f64 = 0.5;
/// RAM power per GiB resident: 3 W per 8 GiB.
pub const DEFAULT_RAM_W_PER_GIB: f64 = 3.0 / 8.0;
/// Clock ticks per second of /proc/self/stat times: USER_HZ, fixed at 100 by the kernel ABI on
/// x86, ARM and RISC-V (it is not the kernel's internal HZ).
pub const USER_HZ: u64 = 100;

/// CPU time consumed by the measured process.
pub trait CpuTime: Send + Sync {
    /// Cumulative user + system CPU time.
    fn cpu_time(&self) -> Result<Duration, EnergyError>;
}

/// Resident memory of the measured process.
pub trait ResidentMemory: Send + Sync {
    /// Resident set size in bytes.
    fn resident_bytes(&self) -> Result<u64, EnergyError>;
}

/// utime + stime (fields 14 and 15) in clock ticks from /proc/PID/stat content. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // rest starts at field 3 (state): utime is the 12th field of rest, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// This process's CPU time from /proc/self/stat (all threads, exited ones included).
#[derive(Debug)]
pub struct ProcCpuTime {
    file: RereadFile,
}

impl ProcCpuTime {
    /// Opens /proc/self/stat.
    pub fn open() -> Result<ProcCpuTime, EnergyError> {
        ProcCpuTime::open_at(Path::new("/proc/self/stat"))
    }

    /// Opens another stat file (e.g. /proc/PID/stat).
    pub fn open_at(path: &Path) -> Result<ProcCpuTime, EnergyError> {
        let file = RereadFile::open(path).map_err(|e| EnergyError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(ProcCpuTime { file })
    }
}

impl CpuTime for ProcCpuTime {
    fn cpu_time(&self) -> Result<Duration, EnergyError> {
        let path = self.file.path();
        let text = self.file.read_string().map_err(|e| EnergyError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let ticks = parse_stat_cpu_ticks(&text).ok_or_else(|| EnergyError::Parse {
            path: path.to_path_buf(),
            what: "utime and stime",
            value: text.chars().take(120).collect(),
            expected: "`pid (comm) state ...` with numeric fields 14 and 15",
        })?;
        Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
    }
}

/// This process's CPU time from `getrusage(RUSAGE_SELF)`: all threads, microsecond resolution.
/// /proc/self/stat counts in 10 ms ticks, too coarse for a 100 ms inference pass; this is the
/// default where the platform has it.
#[cfg(unix)]
#[derive(Debug, Default)]
pub struct RusageCpuTime;

#[cfg(unix)]
impl CpuTime for RusageCpuTime {
    fn cpu_time(&self) -> Result<Duration, EnergyError> {
        // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_SELF is a valid `who`, and `usage` is a live, writable rusage.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        if rc != 0 {
            return Err(EnergyError::Read {
                path: "getrusage(RUSAGE_SELF)".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
    }
}

/// The best CPU-time source of this platform: `getrusage` on Unix, else /proc/self/stat.
pub fn process_cpu_time() -> Result<Box<dyn CpuTime>, EnergyError> {
    #[cfg(unix)]
    {
        Ok(Box::new(RusageCpuTime))
    }
    #[cfg(not(unix))]
    {
        Ok(Box::new(ProcCpuTime::open()?))
    }
}

/// Page size from /proc/self/auxv (entry AT_PAGESZ = 6), 4096 when unreadable.
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let Ok(bytes) = std::fs::read("/proc/self/auxv") else {
        return 4096;
    };
    let w = std::mem::size_of::<usize>();
    let word = |c: &[u8]| -> u64 {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(c);
        if w == 8 {
            u64::from_ne_bytes(b)
        } else {
            u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        }
    };
    bytes
        .chunks_exact(2 * w)
        .map(|pair| (word(&pair[..w]), word(&pair[w..])))
        .find(|&(k, _)| k == AT_PAGESZ)
        .map_or(4096, |(_, v)| v)
}

/// This process's resident memory from /proc/self/statm (field 2, pages).
#[derive(Debug)]
pub struct ProcResidentMemory {
    file: RereadFile,
    page_bytes: u64,
}

impl ProcResidentMemory {
    /// Opens /proc/self/statm.
    pub fn open() -> Result<ProcResidentMemory, EnergyError> {
        let path = Path::new("/proc/self/statm");
        let file = RereadFile::open(path).map_err(|e| EnergyError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(ProcResidentMemory {
            file,
            page_bytes: page_size(),
        })
    }
}

impl ResidentMemory for ProcResidentMemory {
    fn resident_bytes(&self) -> Result<u64, EnergyError> {
        let path = self.file.path();
        let text = self.file.read_string().map_err(|e| EnergyError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let pages: u64 = text
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| EnergyError::Parse {
                path: path.to_path_buf(),
                what: "resident pages",
                value: text.trim().to_string(),
                expected: "`size resident shared text lib data dt` page counts",
            })?;
        Ok(pages * self.page_bytes)
    }
}

/// Per-core CPU power of the estimate and how it was derived (for the probe).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuPower {
    /// Package TDP used (W).
    pub tdp_w: f64,
    /// True when the TDP is the 85 W default rather than configured.
    pub tdp_assumed: bool,
    /// Logical cores the package power is spread over.
    pub cores: usize,
    /// Watts charged per CPU-second of this process.
    pub w_per_core: f64,
}

impl CpuPower {
    /// `tdp_w x 0.5 / cores` per busy core; `None` TDP means the 85 W default.
    pub fn from_tdp(tdp_w: Option<f64>, cores: usize) -> CpuPower {
        let cores = cores.max(1);
        let tdp = tdp_w.unwrap_or(DEFAULT_TDP_W);
        CpuPower {
            tdp_w: tdp,
            tdp_assumed: tdp_w.is_none(),
            cores,
            w_per_core: tdp * TDP_FRACTION / cores as f64,
        }
    }

    /// An explicit per-core power (overrides TDP).
    pub fn per_core(w_per_core: f64, cores: usize) -> CpuPower {
        let cores = cores.max(1);
        CpuPower {
            tdp_w: w_per_core * cores as f64 / TDP_FRACTION,
            tdp_assumed: false,
            cores,
            w_per_core,
        }
    }
}

/// CPU energy estimated from this process's CPU time.
pub struct CpuEstimateMeter {
    cpu: Box<dyn CpuTime>,
    w_per_core: f64,
    origin: Duration,
    cpu_model: String,
}

impl CpuEstimateMeter {
    /// Starts counting from the CPU time `cpu` reports now, at `w_per_core` watts per CPU-second.
    pub fn new(cpu: Box<dyn CpuTime>, w_per_core: f64) -> Result<CpuEstimateMeter, EnergyError> {
        let origin = cpu.cpu_time()?;
        Ok(CpuEstimateMeter {
            cpu,
            w_per_core,
            origin,
            cpu_model: super::host::cpu_model(),
        })
    }

    /// Watts charged per CPU-second.
    pub fn w_per_core(&self) -> f64 {
        self.w_per_core
    }
}

impl Meter for CpuEstimateMeter {
    fn component(&self) -> Component {
        Component::Cpu
    }

    fn source(&self) -> SourceKind {
        SourceKind::Estimate
    }

    fn hardware(&self) -> Vec<String> {
        vec![self.cpu_model.clone()]
    }

    fn read(&self) -> Result<Reading, EnergyError> {
        let used = self.cpu.cpu_time()?.saturating_sub(self.origin);
        Ok(Reading {
            at: Instant::now(),
            counter_j: used.as_secs_f64() * self.w_per_core,
            integrated_j: None,
        })
    }
}

#[derive(Debug)]
struct RamState {
    at: Instant,
    watts: f64,
    total_j: f64,
}

/// RAM energy estimated from this process's resident memory over time.
pub struct RamEstimateMeter {
    mem: Box<dyn ResidentMemory>,
    w_per_gib: f64,
    state: Mutex<RamState>,
}

impl RamEstimateMeter {
    /// Integrates `w_per_gib` x resident GiB from now on.
    pub fn new(
        mem: Box<dyn ResidentMemory>,
        w_per_gib: f64,
    ) -> Result<RamEstimateMeter, EnergyError> {
        let watts = mem.resident_bytes()? as f64 / GIB * w_per_gib;
        Ok(RamEstimateMeter {
            mem,
            w_per_gib,
            state: Mutex::new(RamState {
                at: Instant::now(),
                watts,
                total_j: 0.0,
            }),
        })
    }
}

impl Meter for RamEstimateMeter {
    fn component(&self) -> Component {
        Component::Ram
    }

    fn source(&self) -> SourceKind {
        SourceKind::Estimate
    }

    fn hardware(&self) -> Vec<String> {
        vec![format!("{} W/GiB resident", self.w_per_gib)]
    }

    fn read(&self) -> Result<Reading, EnergyError> {
        let watts = self.mem.resident_bytes()? as f64 / GIB * self.w_per_gib;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let dt = now.saturating_duration_since(st.at).as_secs_f64();
        st.total_j += 0.5 * (st.watts + watts) * dt;
        st.at = now;
        st.watts = watts;
        Ok(Reading {
            at: now,
            counter_j: st.total_j,
            integrated_j: None,
        })
    }

    /// Resident memory changes slowly; once a second keeps the trapezoids honest.
    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() {
        // fields: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        let s = "42 (my (odd) prog) S 1 42 42 0 -1 4194304 10 0 0 0 250 130 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu_ticks(s), Some(380));
        assert_eq!(parse_stat_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn own_process_readable() {
        let t = ProcCpuTime::open().unwrap().cpu_time().unwrap();
        // getrusage agrees with /proc/self/stat to within its 10 ms ticks (plus what ran between).
        let r = RusageCpuTime.cpu_time().unwrap();
        assert!(
            r + Duration::from_millis(20) >= t && r <= t + Duration::from_millis(200),
            "{r:?} vs {t:?}"
        );
        assert!(t < Duration::from_secs(3600));
        let rss = ProcResidentMemory::open()
            .unwrap()
            .resident_bytes()
            .unwrap();
        assert!(rss > 100 * 1024, "rss {rss}");
    }

    #[test]
    fn codecarbon_default_power() {
        let p = CpuPower::from_tdp(None, 2);
        assert_eq!(p.w_per_core, 21.25);
        assert!(p.tdp_assumed);
        assert_eq!(CpuPower::per_core(10.0, 4).tdp_w, 80.0);
    }
}
