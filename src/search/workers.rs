//! `--workers N`: several trials evaluated at once, each on its own share of the machine.
//!
//! On the CPU each worker runs inside its own rayon pool of cores / N threads: burn's `flex`
//! backend runs its kernels on the current rayon pool, so the workers split the cores instead of
//! queueing on one global pool. On GPUs worker w gets device index base + w (one per device).
//!
//! Energy meters see more than one trial: RAPL and NVML measure the hardware, the estimate
//! meter this process's CPU time. When trials overlap, a window's energy is attributed by CPU
//! time: the worker's threads' CPU time over the whole process's in the window (per-thread
//! clocks, `pthread_getcpuclockid`). The record keeps its source and says so in `share`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::device::DeviceChoice;
use crate::energy::estimate::{CpuTime, process_cpu_time};
use crate::energy::{EnergyError, EnergyRecord};

/// The CPU-time clocks of one worker's threads.
#[derive(Clone, Default)]
pub struct ThreadClocks {
    clocks: Arc<Mutex<Vec<ThreadClock>>>,
}

#[derive(Clone, Copy)]
struct ThreadClock(#[cfg(unix)] libc::clockid_t);

impl ThreadClocks {
    /// Adds the calling thread's CPU clock.
    pub fn register_current(&self) {
        #[cfg(unix)]
        {
            let mut id: libc::clockid_t = 0;
            // SAFETY: pthread_self() is the calling thread, alive for this call; `id` is a valid
            // out-pointer.
            let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
            if rc == 0
                && let Ok(mut clocks) = self.clocks.lock()
            {
                clocks.push(ThreadClock(id));
            }
        }
    }

    /// CPU time used so far by the registered threads.
    pub fn total(&self) -> Duration {
        let Ok(clocks) = self.clocks.lock() else {
            return Duration::ZERO;
        };
        clocks.iter().map(|c| c.read()).sum()
    }

    /// How many threads are registered.
    pub fn len(&self) -> usize {
        self.clocks.lock().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ThreadClock {
    fn read(self) -> Duration {
        #[cfg(unix)]
        {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid out-pointer; a clock of a thread that has ended gives an
            // error, read as zero.
            let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
            if rc == 0 {
                return Duration::new(
                    ts.tv_sec.max(0) as u64,
                    ts.tv_nsec.clamp(0, 999_999_999) as u32,
                );
            }
        }
        Duration::ZERO
    }
}

/// Attributes windows of a worker that shares the process with other workers.
pub struct CpuShare {
    own: ThreadClocks,
    process: Box<dyn CpuTime>,
}

/// Readings at the start of a window.
#[derive(Clone, Copy)]
pub struct ShareMark {
    own: Duration,
    process: Duration,
}

impl CpuShare {
    pub fn new(own: ThreadClocks) -> Result<CpuShare, EnergyError> {
        Ok(CpuShare::with_process(own, process_cpu_time()?))
    }

    /// With another clock for the whole process (tests).
    pub fn with_process(own: ThreadClocks, process: Box<dyn CpuTime>) -> CpuShare {
        CpuShare { own, process }
    }

    pub fn mark(&self) -> Result<ShareMark, EnergyError> {
        Ok(ShareMark {
            own: self.own.total(),
            process: self.process.cpu_time()?,
        })
    }

    /// The worker's share of the process's CPU time since `mark`, in 0..=1 (1 when the process
    /// used no measurable CPU time).
    pub fn since(&self, mark: &ShareMark) -> Result<f64, EnergyError> {
        let own = self.own.total().saturating_sub(mark.own).as_secs_f64();
        let all = self
            .process
            .cpu_time()?
            .saturating_sub(mark.process)
            .as_secs_f64();
        Ok(if all > 0.0 { (own / all).min(1.0) } else { 1.0 })
    }

    /// `record` as attributed to this worker.
    pub fn attribute(
        &self,
        record: EnergyRecord,
        mark: &ShareMark,
    ) -> Result<EnergyRecord, EnergyError> {
        Ok(record.scaled(self.since(mark)?))
    }
}

/// Threads per worker on the CPU: the cores divided between the workers, at least one each.
pub fn cpu_threads(workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / workers.max(1)).max(1)
}

/// The device of worker `w`: GPU workers take consecutive device indices from the one given
/// (or 0); CPU workers all use the CPU.
pub fn worker_device(choice: DeviceChoice, w: usize, workers: usize) -> DeviceChoice {
    if workers <= 1 {
        return choice;
    }
    match choice {
        DeviceChoice::Cpu => DeviceChoice::Cpu,
        DeviceChoice::Wgpu(i) => DeviceChoice::Wgpu(Some(i.unwrap_or(0) + w)),
        DeviceChoice::Vulkan(i) => DeviceChoice::Vulkan(Some(i.unwrap_or(0) + w)),
        DeviceChoice::Cuda(i) => DeviceChoice::Cuda(i + w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < d {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            std::hint::black_box(x);
        }
    }

    /// Spins until `clock` has advanced by `d` of CPU time (or 20 s of wall time pass, so a
    /// clock that never moves fails instead of hanging).
    fn burn_cpu(clock: impl Fn() -> Duration, d: Duration) -> bool {
        let start = clock();
        let wall = std::time::Instant::now();
        while clock().saturating_sub(start) < d {
            spin(Duration::from_millis(1));
            if wall.elapsed() > Duration::from_secs(20) {
                return false;
            }
        }
        true
    }

    #[test]
    fn thread_clocks_count_only_registered_threads() {
        let worker = ThreadClocks::default();
        let main = ThreadClocks::default();
        main.register_current();
        let (registered, wait) = std::sync::mpsc::channel();
        let (release, done) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let w = worker.clone();
            s.spawn(move || {
                w.register_current();
                // The worker's own CPU time shows on its clock.
                let moved = burn_cpu(|| w.total(), Duration::from_millis(20));
                registered.send(moved).unwrap();
                // Idle (alive, so its clock stays readable) while the main thread works.
                done.recv().unwrap();
            });
            assert!(wait.recv().unwrap(), "the worker's clock did not advance");
            assert_eq!(worker.len(), 1);
            let before = worker.total();
            assert!(burn_cpu(|| main.total(), Duration::from_millis(30)));
            // 30 ms of the main thread's work moved the idle worker's clock by next to nothing.
            let moved = worker.total().saturating_sub(before);
            assert!(moved < Duration::from_millis(5), "{moved:?}");
            release.send(()).unwrap();
        });
    }

    /// A process clock that reads twice the worker's own time: the worker did half the work.
    struct Double(ThreadClocks);
    impl CpuTime for Double {
        fn cpu_time(&self) -> Result<Duration, EnergyError> {
            Ok(self.0.total() * 2)
        }
    }

    #[test]
    fn the_share_is_own_cpu_time_over_the_process_and_scales_the_record() {
        let clocks = ThreadClocks::default();
        clocks.register_current();
        let share = CpuShare::with_process(clocks.clone(), Box::new(Double(clocks.clone())));
        let mark = share.mark().unwrap();
        assert!(burn_cpu(|| clocks.total(), Duration::from_millis(20)));
        let s = share.since(&mark).unwrap();
        // Both clocks are read a few nanoseconds apart.
        assert!((s - 0.5).abs() < 0.01, "{s}");

        let carbon = crate::energy::Carbon::default();
        let host = crate::energy::host::HostInfo::detect_without_gpu();
        let rec = EnergyRecord::new(
            "train",
            std::time::SystemTime::now(),
            2.0,
            [
                crate::energy::ComponentEnergy::new(crate::energy::SourceKind::Rapl, 100.0, 2.0),
                crate::energy::ComponentEnergy::new(crate::energy::SourceKind::None, 0.0, 2.0),
                crate::energy::ComponentEnergy::new(crate::energy::SourceKind::Estimate, 20.0, 2.0),
            ],
            &carbon,
            &host,
        );
        let half = rec.scaled(0.25);
        assert_eq!(half.share, Some(0.25));
        assert_eq!(half.cpu.source, crate::energy::SourceKind::Rapl);
        assert!((half.energy_j - 30.0).abs() < 1e-9);
        assert!((half.cpu.power_w - 12.5).abs() < 1e-9);
        assert!((half.emissions_kg - rec.emissions_kg * 0.25).abs() < 1e-15);
        assert_eq!(rec.scaled(3.0).share, Some(1.0));
    }

    #[test]
    fn gpu_workers_take_consecutive_devices() {
        assert_eq!(
            worker_device(DeviceChoice::Cuda(1), 2, 3),
            DeviceChoice::Cuda(3)
        );
        assert_eq!(
            worker_device(DeviceChoice::Wgpu(None), 1, 2),
            DeviceChoice::Wgpu(Some(1))
        );
        assert_eq!(
            worker_device(DeviceChoice::Wgpu(None), 0, 1),
            DeviceChoice::Wgpu(None)
        );
        assert_eq!(worker_device(DeviceChoice::Cpu, 1, 2), DeviceChoice::Cpu);
        // Cores are split between workers, never below one thread each.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(cpu_threads(1), cores);
        assert_eq!(cpu_threads(cores * 4), 1);
    }
}
