//! Metering overhead: the cost of opening and closing a window (`start` + `stop`) must stay
//! below 1% of the work it measures. Compares start+stop with the estimate sources (real /proc
//! reads) and with RAPL on a fake sysfs tree against a 10 ms busy loop, then prints the
//! overhead as a percentage of that loop.
//!
//! Run: `cargo bench --no-default-features --bench meter`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use dsnn_hpo::energy::estimate::{ProcResidentMemory, RamEstimateMeter};
use dsnn_hpo::energy::host::HostInfo;
use dsnn_hpo::energy::rapl::RaplMeter;
use dsnn_hpo::energy::tracker::Environment;
use dsnn_hpo::energy::{Carbon, EnergyConfig, EnergyTracker, Meter, Source};

const WORK: Duration = Duration::from_millis(10);

/// Spins for `d` doing integer work (a stand-in for a training step).
fn busy(d: Duration) -> u64 {
    let t = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while t.elapsed() < d {
        for _ in 0..64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

type BoxError = Box<dyn std::error::Error>;

fn estimate_tracker() -> Result<EnergyTracker, BoxError> {
    let cfg = EnergyConfig {
        source: Source::Estimate,
        ..EnergyConfig::default()
    };
    let env = Environment {
        use_nvml: false,
        ..Environment::default()
    };
    Ok(EnergyTracker::from_config_in(&cfg, &env)?)
}

/// RAPL on a fake tree (one package) plus the RAM estimate, as on a machine with readable RAPL.
fn rapl_fake_tracker(root: &Path) -> Result<EnergyTracker, BoxError> {
    let z = root.join("intel-rapl:0");
    std::fs::create_dir_all(&z)?;
    std::fs::write(z.join("name"), "package-0\n")?;
    std::fs::write(z.join("energy_uj"), "123456789\n")?;
    std::fs::write(z.join("max_energy_range_uj"), "262143328850\n")?;
    let meters: Vec<Arc<dyn Meter>> = vec![
        Arc::new(RaplMeter::open(root)?),
        Arc::new(RamEstimateMeter::new(
            Box::new(ProcResidentMemory::open()?),
            0.375,
        )?),
    ];
    Ok(EnergyTracker::with_meters(
        meters,
        Carbon::default(),
        HostInfo::default(),
    )?)
}

fn window_cost(t: &EnergyTracker) -> Result<Duration, BoxError> {
    let n = 2000u32;
    let t0 = Instant::now();
    for _ in 0..n {
        let w = t.start("bench")?;
        black_box(t.stop(w)?);
    }
    Ok(t0.elapsed() / n)
}

fn main() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let est = estimate_tracker()?;
    let rapl = rapl_fake_tracker(dir.path())?;

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("window");
        g.bench_function("start_stop_estimate", |b| {
            b.iter(|| black_box(est.stop(est.start("b").expect("start")).expect("stop")))
        });
        g.bench_function("start_stop_rapl_fake", |b| {
            b.iter(|| black_box(rapl.stop(rapl.start("b").expect("start")).expect("stop")))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("work");
        g.bench_function("busy_10ms", |b| b.iter(|| busy(WORK)));
        g.bench_function("busy_10ms_in_estimate_window", |b| {
            b.iter(|| est.measure("b", || busy(WORK)).expect("measure"))
        });
        g.finish();
    }
    c.final_summary();

    for (name, t) in [("estimate", &est), ("rapl (fake sysfs)", &rapl)] {
        let cost = window_cost(t)?;
        println!(
            "overhead {name}: start+stop = {:.1} µs = {:.3}% of a {} ms window",
            cost.as_secs_f64() * 1e6,
            100.0 * cost.as_secs_f64() / WORK.as_secs_f64(),
            WORK.as_millis()
        );
    }
    Ok(())
}
