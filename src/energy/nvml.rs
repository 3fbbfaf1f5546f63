//! GPU energy from NVML (loaded at run time from libnvidia-ml.so.1).
//!
//! Volta and newer GPUs have a total-energy counter (millijoules since driver load): a window's
//! energy is the counter delta. The counter covers the whole GPU (every process on it) and
//! updates only every 20-100 ms, so for windows shorter than [`SHORT_WINDOW`] (and for GPUs
//! without the counter) we use power sampled by the tracker's background thread every
//! [`SAMPLE_INTERVAL`] and at every reading, integrated by trapezoids.
//!
//! Only the GPUs this process can see are measured: `CUDA_VISIBLE_DEVICES` entries are indices
//! or (prefixes of) `GPU-`/`MIG-` UUIDs; an invalid entry ends the list, as in CUDA. Indices are
//! NVML's (PCI bus order), which is CUDA's order only under `CUDA_DEVICE_ORDER=PCI_BUS_ID`;
//! UUIDs are unambiguous.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use super::{Component, EnergyError, Meter, Reading, SourceKind};

/// Windows shorter than this use integrated power instead of the coarse energy counter.
pub const SHORT_WINDOW: Duration = Duration::from_secs(1);
/// Power sampling period while a window is open.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// One entry of `CUDA_VISIBLE_DEVICES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSelector {
    /// Device index.
    Index(u32),
    /// A `GPU-...` or `MIG-...` UUID or a unique prefix of one.
    Uuid(String),
}

/// Parses `CUDA_VISIBLE_DEVICES`: `None` (unset) means every GPU; `Some(vec![])` means none
/// visible. Parsing stops at the first invalid entry (e.g. `-1`), as CUDA does.
pub fn parse_cuda_visible_devices(value: Option<&str>) -> Option<Vec<DeviceSelector>> {
    let value = value?;
    let mut out = Vec::new();
    for tok in value.split(',').map(str::trim) {
        if let Ok(i) = tok.parse::<u32>() {
            out.push(DeviceSelector::Index(i));
        } else if tok.starts_with("GPU-") || tok.starts_with("MIG-") {
            out.push(DeviceSelector::Uuid(tok.to_string()));
        } else {
            break;
        }
    }
    Some(out)
}

/// Turns an NVML initialisation error into the one-line reason the probe and notes show.
pub fn describe_init_error(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(le) => {
            format!("libnvidia-ml.so.1 not found (no NVIDIA driver installed?): {le}")
        }
        NvmlError::DriverNotLoaded => "NVIDIA driver is not loaded".into(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".into(),
        NvmlError::LibraryNotFound => "NVML library not found".into(),
        other => format!("NVML initialisation failed: {other}"),
    }
}

#[derive(Debug)]
struct Gpu {
    index: u32,
    name: String,
    /// Counter value (mJ) when the meter was opened; `None` when the GPU has no counter.
    counter_origin_mj: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct GpuPower {
    watts: f64,
    integrated_j: f64,
}

#[derive(Debug)]
struct State {
    at: Instant,
    per_gpu: Vec<GpuPower>,
}

/// Energy of the visible NVIDIA GPUs.
pub struct NvmlMeter {
    nvml: Nvml,
    gpus: Vec<Gpu>,
    state: Mutex<State>,
    notes: Vec<String>,
}

fn call_err(call: &'static str, index: u32) -> impl Fn(NvmlError) -> EnergyError {
    move |e| EnergyError::Nvml {
        call,
        index,
        reason: e.to_string(),
    }
}

impl NvmlMeter {
    /// Opens NVML and the GPUs selected by the `CUDA_VISIBLE_DEVICES` environment variable.
    pub fn open() -> Result<NvmlMeter, EnergyError> {
        let env = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        NvmlMeter::open_visible(env.as_deref())
    }

    /// Opens NVML and the GPUs selected by `cuda_visible_devices` (the variable's value).
    pub fn open_visible(cuda_visible_devices: Option<&str>) -> Result<NvmlMeter, EnergyError> {
        let unavailable = |reason: String| EnergyError::NvmlUnavailable { reason };
        let nvml = Nvml::init().map_err(|e| unavailable(describe_init_error(&e)))?;
        let count = nvml
            .device_count()
            .map_err(|e| unavailable(format!("cannot count GPUs: {e}")))?;
        if count == 0 {
            return Err(unavailable("NVML found no NVIDIA GPU".into()));
        }
        let mut notes = Vec::new();
        let indices: Vec<u32> = match parse_cuda_visible_devices(cuda_visible_devices) {
            None => (0..count).collect(),
            Some(sel) => {
                let mut idx = Vec::new();
                for s in sel {
                    match resolve(&nvml, count, &s) {
                        Some(i) if !idx.contains(&i) => idx.push(i),
                        Some(_) => {}
                        None => notes.push(format!(
                            "nvml: CUDA_VISIBLE_DEVICES entry {s:?} matches no GPU; ignored"
                        )),
                    }
                }
                if idx.is_empty() {
                    return Err(unavailable(format!(
                        "CUDA_VISIBLE_DEVICES={:?} leaves no GPU visible",
                        cuda_visible_devices.unwrap_or_default()
                    )));
                }
                idx
            }
        };
        let mut gpus = Vec::new();
        let mut per_gpu = Vec::new();
        for index in indices {
            let dev = nvml
                .device_by_index(index)
                .map_err(call_err("device_by_index", index))?;
            let name = dev.name().unwrap_or_else(|_| format!("GPU {index}"));
            let counter = dev.total_energy_consumption().ok();
            let power = dev.power_usage();
            match (counter, &power) {
                (None, Err(e)) => {
                    notes.push(format!(
                        "nvml: GPU {index} ({name}) has neither an energy counter nor a power \
                         reading ({e}); not measured"
                    ));
                    continue;
                }
                (None, Ok(_)) => notes.push(format!(
                    "nvml: GPU {index} ({name}) has no energy counter (pre-Volta); integrating \
                     sampled power"
                )),
                _ => {}
            }
            per_gpu.push(GpuPower {
                watts: power.map_or(0.0, |mw| f64::from(mw) / 1000.0),
                integrated_j: 0.0,
            });
            gpus.push(Gpu {
                index,
                name,
                counter_origin_mj: counter,
            });
        }
        if gpus.is_empty() {
            return Err(unavailable(format!(
                "no visible GPU reports energy or power: {}",
                notes.join("; ")
            )));
        }
        Ok(NvmlMeter {
            nvml,
            gpus,
            state: Mutex::new(State {
                at: Instant::now(),
                per_gpu,
            }),
            notes,
        })
    }

    /// Indices (NVML order) of the measured GPUs.
    pub fn gpu_indices(&self) -> Vec<u32> {
        self.gpus.iter().map(|g| g.index).collect()
    }

    /// Things the user should know once (GPUs without a counter, ignored selectors).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// NVML index of a `CUDA_VISIBLE_DEVICES` entry.
fn resolve(nvml: &Nvml, count: u32, sel: &DeviceSelector) -> Option<u32> {
    match sel {
        DeviceSelector::Index(i) => (*i < count).then_some(*i),
        DeviceSelector::Uuid(prefix) => (0..count).find(|&i| {
            nvml.device_by_index(i)
                .and_then(|d| d.uuid())
                .is_ok_and(|u| u.starts_with(prefix.as_str()))
        }),
    }
}

impl Meter for NvmlMeter {
    fn component(&self) -> Component {
        Component::Gpu
    }

    fn source(&self) -> SourceKind {
        SourceKind::Nvml
    }

    fn hardware(&self) -> Vec<String> {
        self.gpus.iter().map(|g| g.name.clone()).collect()
    }

    fn read(&self) -> Result<Reading, EnergyError> {
        let mut counters = Vec::with_capacity(self.gpus.len());
        let mut watts = Vec::with_capacity(self.gpus.len());
        for g in &self.gpus {
            let dev = self
                .nvml
                .device_by_index(g.index)
                .map_err(call_err("device_by_index", g.index))?;
            counters.push(match g.counter_origin_mj {
                Some(origin) => Some(
                    dev.total_energy_consumption()
                        .map_err(call_err("total_energy_consumption", g.index))?
                        .saturating_sub(origin),
                ),
                None => None,
            });
            watts.push(match dev.power_usage() {
                Ok(mw) => Some(f64::from(mw) / 1000.0),
                // a counter GPU may lack power readings: integrated energy then stays flat and
                // the counter is used for every window
                Err(_) if g.counter_origin_mj.is_some() => None,
                Err(e) => return Err(call_err("power_usage", g.index)(e)),
            });
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let dt = now.saturating_duration_since(st.at).as_secs_f64();
        st.at = now;
        let mut counter_j = 0.0;
        let mut integrated_j = 0.0;
        for ((p, w), c) in st.per_gpu.iter_mut().zip(watts).zip(counters) {
            if let Some(w) = w {
                p.integrated_j += 0.5 * (p.watts + w) * dt;
                p.watts = w;
            }
            integrated_j += p.integrated_j;
            counter_j += c.map_or(p.integrated_j, |mj| mj as f64 / 1000.0);
        }
        Ok(Reading {
            at: now,
            counter_j,
            integrated_j: Some(integrated_j),
        })
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(SAMPLE_INTERVAL)
    }

    /// The counter delta, except for windows shorter than [`SHORT_WINDOW`] where the counter's
    /// 20-100 ms update period would dominate: there, integrated sampled power.
    fn energy_between(&self, start: &Reading, end: &Reading) -> f64 {
        let short = end.at.saturating_duration_since(start.at) < SHORT_WINDOW;
        match (short, start.integrated_j, end.integrated_j) {
            (true, Some(a), Some(b)) if b > a => b - a,
            _ => (end.counter_j - start.counter_j).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_visible_devices_forms() {
        use DeviceSelector::*;
        assert_eq!(parse_cuda_visible_devices(None), None);
        assert_eq!(parse_cuda_visible_devices(Some("")), Some(vec![]));
        assert_eq!(
            parse_cuda_visible_devices(Some("2, 0")),
            Some(vec![Index(2), Index(0)])
        );
        assert_eq!(
            parse_cuda_visible_devices(Some("GPU-8932f937,1")),
            Some(vec![Uuid("GPU-8932f937".into()), Index(1)])
        );
        // CUDA ignores everything from the first invalid entry on.
        assert_eq!(
            parse_cuda_visible_devices(Some("0,-1,1")),
            Some(vec![Index(0)])
        );
        assert_eq!(parse_cuda_visible_devices(Some("-1")), Some(vec![]));
    }
}
