//! The tracker: holds the meters chosen for this machine and measures named, nestable windows.
//!
//! A window is a reading of every meter at `start` and another at `stop`; overlapping and nested
//! windows are just more readings. Meters that must be read periodically while a window is open
//! (RAPL wrap-around, NVML power integration, RAM trapezoids) are polled by one background
//! thread that sleeps between ticks on a condition variable: it polls nothing once the last
//! window has closed, and parks (blocks with no timeout) after a second without windows, so it
//! costs nothing between phases and back-to-back windows never pay for waking it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::carbon::Carbon;
use super::config::EnergyConfig;
use super::estimate::{CpuEstimateMeter, CpuPower, ProcResidentMemory, RamEstimateMeter};
use super::host::HostInfo;
use super::nvml::NvmlMeter;
use super::rapl::{DEFAULT_POWERCAP_ROOT, RaplMeter};
use super::record::{ComponentEnergy, EnergyRecord};
use super::{Component, EnergyError, Meter, Reading, Source, SourceKind};

/// Where the tracker looks for hardware; injectable so tests use a fake sysfs tree and can keep
/// NVML out of the picture.
#[derive(Clone, Debug)]
pub struct Environment {
    /// Powercap sysfs root (default `/sys/class/powercap`).
    pub powercap_root: PathBuf,
    /// Value of `CUDA_VISIBLE_DEVICES` (default: the process environment's).
    pub cuda_visible_devices: Option<String>,
    /// Whether to try NVML at all (default true).
    pub use_nvml: bool,
    /// Logical cores the estimate spreads package power over (default: this machine's).
    pub logical_cores: usize,
}

impl Default for Environment {
    fn default() -> Self {
        Environment {
            powercap_root: PathBuf::from(DEFAULT_POWERCAP_ROOT),
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            use_nvml: true,
            logical_cores: super::host::logical_cores(),
        }
    }
}

/// CPU power of the estimate for a config on `cores` logical cores.
pub fn cpu_power_for(cfg: &EnergyConfig, cores: usize) -> CpuPower {
    match cfg.cpu_w_per_core {
        Some(w) => CpuPower::per_core(w, cores),
        None => CpuPower::from_tdp(cfg.cpu_tdp_w, cores),
    }
}

/// Text for the estimate's parameters, shared with the probe.
pub fn describe_cpu_power(p: &CpuPower, cpu_model: &str) -> String {
    let tdp = if p.tdp_assumed {
        format!(
            "{} W TDP assumed (no TDP configured; CPU {cpu_model:?})",
            p.tdp_w
        )
    } else {
        format!("{} W TDP (configured; CPU {cpu_model:?})", p.tdp_w)
    };
    format!(
        "{tdp} x 0.5 over {} logical cores = {} W per busy core",
        p.cores, p.w_per_core
    )
}

/// How long the poller keeps ticking after the last window closed before it parks (blocks with
/// no timeout). Back-to-back windows (one per training step) then never need to wake it.
const PARK_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct PollState {
    /// Open windows.
    active: usize,
    /// Set on tracker drop.
    shutdown: bool,
    /// The poller is blocked until notified.
    parked: bool,
}

#[derive(Debug, Default)]
struct PollShared {
    state: Mutex<PollState>,
    cv: Condvar,
}

impl PollShared {
    fn lock(&self) -> MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps the poller polling while a window is open; dropping it (stop, or a window dropped
/// without stop) releases it. Only a start that finds the poller parked pays for a wake-up.
#[derive(Debug)]
struct ActiveGuard(Arc<PollShared>);

impl ActiveGuard {
    fn new(shared: &Arc<PollShared>) -> ActiveGuard {
        let mut st = shared.lock();
        st.active += 1;
        let wake = st.parked;
        drop(st);
        if wake {
            shared.cv.notify_all();
        }
        ActiveGuard(Arc::clone(shared))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.active = st.active.saturating_sub(1);
    }
}

/// Polls each meter at its own interval while windows are open, sleeping between ticks. With no
/// window open it polls nothing: it checks once per tick until [`PARK_AFTER`] has passed, then
/// parks until the next window opens. Poll errors are ignored here: they only cost accuracy
/// between readings, and a persistent failure surfaces at `stop`.
fn poll_loop(shared: Arc<PollShared>, meters: Vec<(Arc<dyn Meter>, Duration)>, tick: Duration) {
    let mut last = vec![Instant::now(); meters.len()];
    let mut idle_since: Option<Instant> = None;
    let mut st = shared.lock();
    loop {
        if st.shutdown {
            return;
        }
        if st.active == 0 {
            let idle = *idle_since.get_or_insert_with(Instant::now);
            if idle.elapsed() >= PARK_AFTER {
                st.parked = true;
                while st.active == 0 && !st.shutdown {
                    st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.parked = false;
                idle_since = None;
                // the window that woke us has just read every meter
                last.iter_mut().for_each(|t| *t = Instant::now());
                continue;
            }
        } else {
            idle_since = None;
        }
        st = shared
            .cv
            .wait_timeout(st, tick)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
        if st.shutdown || st.active == 0 {
            continue;
        }
        drop(st);
        let now = Instant::now();
        for ((m, every), t) in meters.iter().zip(last.iter_mut()) {
            if now.saturating_duration_since(*t) + tick / 2 >= *every {
                let _ = m.poll();
                *t = now;
            }
        }
        st = shared.lock();
    }
}

static NEXT_TRACKER_ID: AtomicU64 = AtomicU64::new(1);

/// An open measurement window; give it back to [`EnergyTracker::stop`].
#[derive(Debug)]
pub struct Window {
    tracker: u64,
    phase: String,
    start_wall: SystemTime,
    start: Instant,
    readings: Vec<Reading>,
    _active: Option<ActiveGuard>,
}

impl Window {
    /// The phase name given to `start`.
    pub fn phase(&self) -> &str {
        &self.phase
    }

    /// Time since the window was opened.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Measures named windows with the meters chosen for this machine.
pub struct EnergyTracker {
    id: u64,
    meters: Vec<Arc<dyn Meter>>,
    carbon: Carbon,
    host: HostInfo,
    notes: Vec<String>,
    shared: Option<Arc<PollShared>>,
    poller: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EnergyTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnergyTracker")
            .field("sources", &self.sources())
            .field("carbon", &self.carbon)
            .field("notes", &self.notes)
            .finish()
    }
}

impl EnergyTracker {
    /// Chooses meters for this machine as `cfg.source` says (see [`Source`]).
    pub fn from_config(cfg: &EnergyConfig) -> Result<EnergyTracker, EnergyError> {
        EnergyTracker::from_config_in(cfg, &Environment::default())
    }

    /// As [`EnergyTracker::from_config`], looking for hardware where `env` says.
    pub fn from_config_in(
        cfg: &EnergyConfig,
        env: &Environment,
    ) -> Result<EnergyTracker, EnergyError> {
        cfg.validate()?;
        let carbon = cfg.carbon()?;
        let mut host = HostInfo::detect_without_gpu();
        host.cpu_count = env.logical_cores.max(1);
        let mut notes = Vec::new();
        let mut meters: Vec<Arc<dyn Meter>> = Vec::new();
        let forced = |name: &str, e: EnergyError| EnergyError::ForcedSourceUnavailable {
            source_name: name.into(),
            reason: e.to_string(),
        };

        // GPU
        if cfg.source == Source::Estimate {
            notes.push("gpu: not measured (source = estimate touches no hardware counter)".into());
        } else if !env.use_nvml {
            if cfg.source == Source::Nvml {
                return Err(forced(
                    "nvml",
                    EnergyError::NvmlUnavailable {
                        reason: "NVML disabled in this environment".into(),
                    },
                ));
            }
            notes.push("gpu: not measured (NVML disabled)".into());
        } else {
            match NvmlMeter::open_visible(env.cuda_visible_devices.as_deref()) {
                Ok(m) => {
                    notes.extend(m.notes().iter().cloned());
                    host.gpu_models = m.hardware();
                    notes.push(format!("gpu: nvml ({})", host.gpu_models.join(", ")));
                    meters.push(Arc::new(m));
                }
                Err(e) if cfg.source == Source::Nvml => return Err(forced("nvml", e)),
                Err(e) => notes.push(format!("gpu: not measured: {e}")),
            }
        }

        // CPU
        let estimate = |why: Option<String>| -> Result<(Arc<dyn Meter>, String), EnergyError> {
            let power = cpu_power_for(cfg, host.cpu_count);
            let m = CpuEstimateMeter::new(super::estimate::process_cpu_time()?, power.w_per_core)?;
            let mut note = format!(
                "cpu: estimate from this process's CPU time: {}",
                describe_cpu_power(&power, &host.cpu_model)
            );
            if let Some(why) = why {
                note.push_str(&format!(" ({why})"));
            }
            Ok((Arc::new(m), note))
        };
        let rapl = |m: RaplMeter| -> (Arc<dyn Meter>, String) {
            let note = format!("cpu: rapl ({})", m.domain_names().join(", "));
            (Arc::new(m), note)
        };
        let (cpu, note) = match cfg.source {
            Source::Estimate => estimate(None)?,
            Source::Rapl => {
                rapl(RaplMeter::open(&env.powercap_root).map_err(|e| forced("rapl", e))?)
            }
            Source::Auto | Source::Nvml => match RaplMeter::open(&env.powercap_root) {
                Ok(m) => rapl(m),
                Err(e) => estimate(Some(e.to_string()))?,
            },
        };
        notes.push(note);
        meters.push(cpu);

        // RAM: always estimated
        meters.push(Arc::new(RamEstimateMeter::new(
            Box::new(ProcResidentMemory::open()?),
            cfg.ram_w_per_gb,
        )?));
        notes.push(format!(
            "ram: estimate from this process's resident memory at {} W/GiB",
            cfg.ram_w_per_gb
        ));

        let mut t = EnergyTracker::with_meters(meters, carbon, host)?;
        t.notes = notes;
        Ok(t)
    }

    /// A tracker over given meters (custom sources, tests, benches).
    pub fn with_meters(
        meters: Vec<Arc<dyn Meter>>,
        carbon: Carbon,
        host: HostInfo,
    ) -> Result<EnergyTracker, EnergyError> {
        let polled: Vec<(Arc<dyn Meter>, Duration)> = meters
            .iter()
            .filter_map(|m| m.poll_interval().map(|d| (Arc::clone(m), d)))
            .collect();
        let (shared, poller) = match polled.iter().map(|(_, d)| *d).min() {
            None => (None, None),
            Some(tick) => {
                let shared = Arc::new(PollShared::default());
                let s = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("energy-poll".into())
                    .spawn(move || poll_loop(s, polled, tick))
                    .map_err(EnergyError::Thread)?;
                (Some(shared), Some(handle))
            }
        };
        Ok(EnergyTracker {
            id: NEXT_TRACKER_ID.fetch_add(1, Ordering::Relaxed),
            meters,
            carbon,
            host,
            notes: Vec::new(),
            shared,
            poller,
        })
    }

    /// What the user should be told once: the chosen source per component and why others were
    /// not used (e.g. "gpu: not measured: nvml: unavailable: libnvidia-ml.so.1 not found ...").
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Carbon parameters applied to every record.
    pub fn carbon(&self) -> &Carbon {
        &self.carbon
    }

    /// Hardware description carried by every record.
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// Source per component, `[cpu, gpu, ram]`.
    pub fn sources(&self) -> [SourceKind; 3] {
        let of = |c: Component| {
            self.meters
                .iter()
                .find(|m| m.component() == c)
                .map_or(SourceKind::None, |m| m.source())
        };
        [of(Component::Cpu), of(Component::Gpu), of(Component::Ram)]
    }

    /// Opens a window named `phase`. Windows may overlap and nest.
    pub fn start(&self, phase: &str) -> Result<Window, EnergyError> {
        let active = self.shared.as_ref().map(ActiveGuard::new);
        let start_wall = SystemTime::now();
        let start = Instant::now();
        let readings = self
            .meters
            .iter()
            .map(|m| m.read())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Window {
            tracker: self.id,
            phase: phase.to_string(),
            start_wall,
            start,
            readings,
            _active: active,
        })
    }

    /// Closes a window and returns its record.
    pub fn stop(&self, window: Window) -> Result<EnergyRecord, EnergyError> {
        if window.tracker != self.id {
            return Err(EnergyError::ForeignWindow {
                phase: window.phase,
            });
        }
        let ends = self
            .meters
            .iter()
            .map(|m| m.read())
            .collect::<Result<Vec<_>, _>>()?;
        let duration_s = window.start.elapsed().as_secs_f64();
        drop(window._active);
        let mut joules = [0.0f64; 3];
        let mut sources = [SourceKind::None; 3];
        for ((m, a), b) in self.meters.iter().zip(&window.readings).zip(&ends) {
            let k = match m.component() {
                Component::Cpu => 0,
                Component::Gpu => 1,
                Component::Ram => 2,
            };
            joules[k] += m.energy_between(a, b);
            if sources[k] == SourceKind::None {
                sources[k] = m.source();
            }
        }
        let parts = [0, 1, 2].map(|k| ComponentEnergy::new(sources[k], joules[k], duration_s));
        Ok(EnergyRecord::new(
            &window.phase,
            window.start_wall,
            duration_s,
            parts,
            &self.carbon,
            &self.host,
        ))
    }

    /// Runs `f` inside a window named `phase`.
    pub fn measure<T>(
        &self,
        phase: &str,
        f: impl FnOnce() -> T,
    ) -> Result<(T, EnergyRecord), EnergyError> {
        let w = self.start(phase)?;
        let out = f();
        let rec = self.stop(w)?;
        Ok((out, rec))
    }
}

impl Drop for EnergyTracker {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.lock().shutdown = true;
            shared.cv.notify_all();
        }
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
    }
}
