//! Facts about this machine that records carry (CPU model, logical cores, total RAM), read from
//! /proc. Parsing is split from reading so tests can feed hand-written file contents.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Hardware description carried by every record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// CPU model name (/proc/cpuinfo).
    pub cpu_model: String,
    /// Logical cores of the machine.
    pub cpu_count: usize,
    /// Names of the measured GPUs (NVML), empty when no GPU is measured.
    pub gpu_models: Vec<String>,
    /// Total RAM of the machine, GiB.
    pub ram_total_gib: f64,
}

impl HostInfo {
    /// CPU and RAM facts of this machine; GPU names are filled in by whoever opens NVML.
    pub fn detect_without_gpu() -> HostInfo {
        HostInfo {
            cpu_model: cpu_model(),
            cpu_count: logical_cores(),
            gpu_models: Vec::new(),
            ram_total_gib: ram_total_gib(),
        }
    }
}

/// Label used when /proc/cpuinfo names no model (non-Linux, containers hiding it).
pub const UNKNOWN_CPU: &str = "unknown CPU";

/// The CPU model name from /proc/cpuinfo content: x86's `model name`, else ARM's `Model` or
/// `Hardware` line; `None` when no such line is present.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware"] {
        for line in cpuinfo.lines() {
            if let Some((k, v)) = line.split_once(':')
                && k.trim() == key
            {
                let v = v.trim();
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// Number of `processor` entries in /proc/cpuinfo content (logical cores of the machine).
pub fn parse_logical_cores(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == "processor")
        })
        .count()
}

/// `MemTotal` from /proc/meminfo content, in bytes.
pub fn parse_mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU model of this machine, or [`UNKNOWN_CPU`].
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| parse_cpu_model(&s))
        .unwrap_or_else(|| UNKNOWN_CPU.to_string())
}

/// Logical cores of the whole machine (not the cgroup quota: per-core power divides the package
/// power over all its cores), falling back to the scheduler's parallelism, then 1.
pub fn logical_cores() -> usize {
    let from_cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| parse_logical_cores(&s))
        .unwrap_or(0);
    if from_cpuinfo > 0 {
        return from_cpuinfo;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Total RAM of the machine in GiB (0 when /proc/meminfo is unreadable).
pub fn ram_total_gib() -> f64 {
    std::fs::read_to_string(Path::new("/proc/meminfo"))
        .ok()
        .and_then(|s| parse_mem_total_bytes(&s))
        .map_or(0.0, |b| b as f64 / GIB)
}

/// Bytes in one GiB.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_cpuinfo() {
        let s = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n\
                 processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(parse_cpu_model(s).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(parse_logical_cores(s), 2);
    }

    #[test]
    fn arm_cpuinfo_and_missing_model() {
        let s =
            "processor : 0\nBogoMIPS : 48.00\n\nprocessor : 1\nModel : Raspberry Pi 4 Model B\n";
        assert_eq!(
            parse_cpu_model(s).as_deref(),
            Some("Raspberry Pi 4 Model B")
        );
        assert_eq!(parse_cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn meminfo_total() {
        let s = "MemTotal:        8048576 kB\nMemFree:  100 kB\n";
        assert_eq!(parse_mem_total_bytes(s), Some(8_048_576 * 1024));
        assert_eq!(parse_mem_total_bytes("MemFree: 1 kB\n"), None);
    }
}
