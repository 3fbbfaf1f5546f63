//! CPU package energy from RAPL counters in the Linux powercap sysfs tree.
//!
//! Each package domain `intel-rapl:N` (AMD Zen: also `intel-rapl:N`, or `amd-rapl:N`) has
//! `name` = `package-N`, `energy_uj` (microjoules, whole package, every process) and
//! `max_energy_range_uj` (where `energy_uj` wraps to 0). Sub-zones (`intel-rapl:N:M`, core/dram)
//! and the MMIO duplicate (`intel-rapl-mmio:N`) are skipped so nothing is counted twice.
//! Since Linux 5.10 `energy_uj` is readable by root only; we say so instead of failing vaguely.
//! The root is a parameter so tests build a fake tree.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::reread::RereadFile;
use super::{Component, EnergyError, Meter, Reading, SourceKind};

/// Where the kernel exposes powercap zones.
pub const DEFAULT_POWERCAP_ROOT: &str = "/sys/class/powercap";

/// Package power assumed when choosing the poll interval (a wrap must not pass unseen).
const MAX_PACKAGE_POWER_W: f64 = 500.0;

#[derive(Debug)]
struct Domain {
    name: String,
    energy: RereadFile,
    max_range_uj: u64,
}

#[derive(Debug)]
struct State {
    last_raw: Vec<u64>,
    total_uj: u64,
}

/// Sum of the RAPL package counters of this machine, wrap-corrected.
#[derive(Debug)]
pub struct RaplMeter {
    domains: Vec<Domain>,
    state: Mutex<State>,
    cpu_model: String,
}

/// True for a top-level RAPL zone directory name: `intel-rapl:N` or `amd-rapl:N`.
fn is_package_zone(dir_name: &str) -> bool {
    let Some((prefix, idx)) = dir_name.split_once(':') else {
        return false;
    };
    matches!(prefix, "intel-rapl" | "amd-rapl")
        && !idx.is_empty()
        && idx.bytes().all(|b| b.is_ascii_digit())
}

/// Maps a failed counter read: "permission denied" becomes the actionable RAPL message.
pub fn read_error(path: &Path, e: std::io::Error) -> EnergyError {
    if e.kind() == ErrorKind::PermissionDenied {
        EnergyError::RaplUnavailable {
            reason: format!(
                "{p} exists but is not readable (permission denied): run as root or \
                 `sudo chmod o+r {p}`",
                p = path.display()
            ),
        }
    } else {
        EnergyError::Read {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Reads a sysfs counter (an unsigned integer) once.
fn read_u64(path: &Path) -> Result<u64, EnergyError> {
    let text = std::fs::read_to_string(path).map_err(|e| read_error(path, e))?;
    parse_u64(path, &text)
}

/// Re-reads an open counter.
fn reread_u64(file: &RereadFile) -> Result<u64, EnergyError> {
    let text = file.read_string().map_err(|e| read_error(file.path(), e))?;
    parse_u64(file.path(), &text)
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, EnergyError> {
    text.trim().parse().map_err(|_| EnergyError::Parse {
        path: path.to_path_buf(),
        what: "counter",
        value: text.trim().to_string(),
        expected: "an unsigned integer in microjoules",
    })
}

/// Counter increase from `last` to `now` for a counter that wraps to 0 after `max`.
///
/// A wrap loses at most one counter unit (the step from `max` to 0), well below a microjoule
/// per wrap in practice.
pub fn wrapped_delta(last: u64, now: u64, max: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        max.saturating_sub(last) + now
    }
}

/// While opening, any failure to read a counter means "RAPL unavailable" (so auto-selection falls
/// back to the estimate and the probe can say why).
fn as_unavailable(e: EnergyError) -> EnergyError {
    match e {
        EnergyError::Read { path, source } => EnergyError::RaplUnavailable {
            reason: format!("cannot read {}: {source}", path.display()),
        },
        EnergyError::Parse { .. } => EnergyError::RaplUnavailable {
            reason: e.to_string(),
        },
        other => other,
    }
}

impl RaplMeter {
    /// Opens every package domain under `root` (normally [`DEFAULT_POWERCAP_ROOT`]) and takes a
    /// first reading; fails with [`EnergyError::RaplUnavailable`] saying why when none is
    /// readable.
    pub fn open(root: &Path) -> Result<RaplMeter, EnergyError> {
        let unavailable = |reason: String| EnergyError::RaplUnavailable { reason };
        if !root.exists() {
            return Err(unavailable(format!(
                "{} does not exist (no powercap support in this kernel or container)",
                root.display()
            )));
        }
        let entries = std::fs::read_dir(root)
            .map_err(|e| unavailable(format!("cannot list {}: {e}", root.display())))?;
        let mut zones: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(is_package_zone))
            .map(|e| e.path())
            .collect();
        zones.sort();
        let mut domains = Vec::new();
        for dir in zones {
            let name = match std::fs::read_to_string(dir.join("name")) {
                Ok(n) => n.trim().to_string(),
                Err(_) => continue,
            };
            if !name.starts_with("package") {
                continue;
            }
            let max_path = dir.join("max_energy_range_uj");
            let max_range_uj = read_u64(&max_path).map_err(as_unavailable)?;
            let energy_path = dir.join("energy_uj");
            let energy = RereadFile::open(&energy_path)
                .map_err(|e| as_unavailable(read_error(&energy_path, e)))?;
            domains.push(Domain {
                name,
                energy,
                max_range_uj,
            });
        }
        if domains.is_empty() {
            return Err(unavailable(format!(
                "no RAPL package domain under {} (expected intel-rapl:N or amd-rapl:N with \
                 name = package-N)",
                root.display()
            )));
        }
        let last_raw = domains
            .iter()
            .map(|d| reread_u64(&d.energy).map_err(as_unavailable))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RaplMeter {
            domains,
            state: Mutex::new(State {
                last_raw,
                total_uj: 0,
            }),
            cpu_model: super::host::cpu_model(),
        })
    }

    /// Names of the package domains read (`package-0`, ...).
    pub fn domain_names(&self) -> Vec<String> {
        self.domains.iter().map(|d| d.name.clone()).collect()
    }

    /// Reads all counters and adds their wrap-corrected increases to the running total (µJ).
    ///
    /// The counters are read under the lock: a stale value applied after a fresher one (poller
    /// and caller racing) would look like a wrap-around and add a whole counter range.
    fn update(&self) -> Result<u64, EnergyError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let raws = self
            .domains
            .iter()
            .map(|d| reread_u64(&d.energy))
            .collect::<Result<Vec<_>, _>>()?;
        let mut added = 0;
        for ((d, last), now) in self.domains.iter().zip(st.last_raw.iter_mut()).zip(raws) {
            added += wrapped_delta(*last, now, d.max_range_uj);
            *last = now;
        }
        st.total_uj += added;
        Ok(st.total_uj)
    }
}

impl Meter for RaplMeter {
    fn component(&self) -> Component {
        Component::Cpu
    }

    fn source(&self) -> SourceKind {
        SourceKind::Rapl
    }

    fn hardware(&self) -> Vec<String> {
        vec![self.cpu_model.clone()]
    }

    fn read(&self) -> Result<Reading, EnergyError> {
        let total = self.update()?;
        Ok(Reading {
            at: Instant::now(),
            counter_j: total as f64 * 1e-6,
            integrated_j: None,
        })
    }

    /// Half the shortest time a counter could take to wrap at 500 W, between 0.1 s and 10 s.
    fn poll_interval(&self) -> Option<Duration> {
        let min_range = self.domains.iter().map(|d| d.max_range_uj).min()?;
        let wrap_s = min_range as f64 * 1e-6 / MAX_PACKAGE_POWER_W;
        Some(Duration::from_secs_f64((wrap_s / 2.0).clamp(0.1, 10.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names() {
        assert!(is_package_zone("intel-rapl:0"));
        assert!(is_package_zone("amd-rapl:12"));
        assert!(!is_package_zone("intel-rapl:0:1"));
        assert!(!is_package_zone("intel-rapl-mmio:0"));
        assert!(!is_package_zone("intel-rapl"));
        assert!(!is_package_zone("intel-rapl:"));
    }

    #[test]
    fn permission_denied_message() {
        let p = Path::new("/sys/class/powercap/intel-rapl:0/energy_uj");
        let e = read_error(p, std::io::Error::from(ErrorKind::PermissionDenied)).to_string();
        assert_eq!(
            e,
            "rapl: unavailable: /sys/class/powercap/intel-rapl:0/energy_uj exists but is not \
             readable (permission denied): run as root or \
             `sudo chmod o+r /sys/class/powercap/intel-rapl:0/energy_uj`"
        );
    }

    #[test]
    fn wrap_arithmetic() {
        assert_eq!(wrapped_delta(100, 350, 1000), 250);
        // 900 -> max 1000 is 100 µJ, then 0 -> 50: 150 µJ
        assert_eq!(wrapped_delta(900, 50, 1000), 150);
        assert_eq!(wrapped_delta(7, 7, 1000), 0);
    }
}
