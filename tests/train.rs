//! Training one DSNN configuration on the bundled Fashion-MNIST subset, on the CPU backend.
#![cfg(feature = "dsnn")]

use burn::tensor::Device;
use dsnn_hpo::arch::Backbone;
use dsnn_hpo::data::{DataConfig, LoadedData};
use dsnn_hpo::shift::{Rounding, ShiftKind};
use dsnn_hpo::train::optim::OptimizerKind;
use dsnn_hpo::train::{
    Quiet, RunOptions, TrainConfig, TrainError, TrainReport, TrainStatus, train,
};

fn bundled(limit: usize) -> LoadedData {
    let cfg = DataConfig {
        limit_train: Some(limit),
        validation_fraction: 0.2,
        ..DataConfig::default()
    };
    cfg.load().expect("bundled data loads")
}

fn small(kind: ShiftKind, optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        model: Backbone::SmallCnn,
        shift_type: kind,
        rounding: Rounding::Stochastic,
        optimizer,
        lr: match optimizer {
            OptimizerKind::Sgd => 0.05,
            _ => 0.005,
        },
        batch_size: 32,
        seed: 7,
        ..TrainConfig::default()
    }
}

/// burn's backend RNG seed is process-wide: trainings that must repeat bit for bit cannot
/// run on parallel test threads.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(cfg: &TrainConfig, data: &LoadedData, epochs: usize, opts: &RunOptions<'_>) -> TrainReport {
    try_run(cfg, data, epochs, opts).expect("training runs")
}

/// Every training of this file holds the lock, failing ones too: a network is initialised
/// (drawing from the RNG) before a checkpoint can be refused.
fn try_run(
    cfg: &TrainConfig,
    data: &LoadedData,
    epochs: usize,
    opts: &RunOptions<'_>,
) -> Result<TrainReport, TrainError> {
    let _one_at_a_time = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    train(cfg, data, &Device::flex(), epochs, opts, &mut Quiet)
}

/// Everything but the timings, which differ run to run.
fn outcome(r: &TrainReport) -> (TrainStatus, usize, u64, u64, u64) {
    (
        r.status.clone(),
        r.epochs,
        r.valid_loss.to_bits(),
        r.valid_accuracy.to_bits(),
        r.train_loss.to_bits(),
    )
}

#[test]
fn a_short_run_learns_well_above_chance() {
    // 800 training and 200 validation images, 2 epochs. Chance is 10% (10 balanced classes);
    // a small CNN reaches about 70% here. 40% leaves a wide margin for seeds and rounding.
    let data = bundled(1000);
    let cfg = TrainConfig {
        shift_depth: 2,
        ..small(ShiftKind::Q, OptimizerKind::Sgd)
    };
    let r = run(&cfg, &data, 2, &RunOptions::default());
    assert_eq!(r.status, TrainStatus::Completed);
    assert!(r.valid_accuracy > 0.40, "accuracy {}", r.valid_accuracy);
    assert!((r.valid_error - (1.0 - r.valid_accuracy)).abs() < 1e-12);
    assert!(
        r.valid_loss.is_finite() && r.valid_loss < 2.0,
        "loss {}",
        r.valid_loss
    );
    assert!(r.images_per_s > 0.0);
    assert_eq!(r.epochs, 2);
}

#[test]
fn same_seed_same_result_bit_for_bit() {
    let data = bundled(300);
    let cfg = small(ShiftKind::Ps, OptimizerKind::Radam);
    let a = run(&cfg, &data, 1, &RunOptions::default());
    let b = run(&cfg, &data, 1, &RunOptions::default());
    assert_eq!(outcome(&a), outcome(&b));
    let other = TrainConfig { seed: 8, ..cfg };
    let c = run(&other, &data, 1, &RunOptions::default());
    assert_ne!(outcome(&a), outcome(&c), "the seed must matter");
}

#[test]
fn continuation_equals_straight_training() {
    let data = bundled(300);
    for (kind, optimizer) in [
        (ShiftKind::Ps, OptimizerKind::Sgd),
        (ShiftKind::Q, OptimizerKind::Adam),
        (ShiftKind::Ps, OptimizerKind::Radam),
        // Lookahead syncs every 6 steps: 8 steps an epoch put syncs on both sides of the save.
        (ShiftKind::Ps, OptimizerKind::Ranger),
        (ShiftKind::Ps, OptimizerKind::Adadelta),
    ] {
        let cfg = TrainConfig {
            schedule_epochs: Some(3),
            ..small(kind, optimizer)
        };
        let dir = tempfile::tempdir().unwrap();
        let straight = run(&cfg, &data, 3, &RunOptions::default());
        let first = run(
            &cfg,
            &data,
            1,
            &RunOptions {
                save_to: Some(dir.path()),
                ..Default::default()
            },
        );
        assert_eq!(first.epochs, 1);
        let continued = run(
            &cfg,
            &data,
            3,
            &RunOptions {
                resume_from: Some(dir.path()),
                ..Default::default()
            },
        );
        assert_eq!(continued.start_epoch, 1);
        assert_eq!(
            outcome(&continued),
            outcome(&straight),
            "{kind} {optimizer}: 1 + 2 epochs differ from 3"
        );
    }
}

/// A trial killed after some epochs continues from its newest progress generation: the same
/// result as training straight through, with the earlier epochs not trained again.
#[test]
fn progress_generations_continue_a_killed_trial_exactly() {
    let data = bundled(300);
    let cfg = TrainConfig {
        schedule_epochs: Some(3),
        ..small(ShiftKind::Ps, OptimizerKind::Adam)
    };
    let root = tempfile::tempdir().unwrap();
    let progress = root.path().join("5.progress");
    let straight = run(
        &cfg,
        &data,
        3,
        &RunOptions {
            progress_to: Some(&progress),
            ..Default::default()
        },
    );
    // Generations after epochs 1 and 2; none after the last (the trial's own result).
    let (newest, path) = dsnn_hpo::store::progress::newest(&progress).unwrap();
    assert_eq!(newest, 2);
    assert!(progress.join("1").join("state.json").exists());
    assert!(!progress.join("3").exists());
    let continued = run(
        &cfg,
        &data,
        3,
        &RunOptions {
            resume_from: Some(&path),
            ..Default::default()
        },
    );
    assert_eq!(continued.start_epoch, 2);
    assert_eq!(outcome(&continued), outcome(&straight));
}

#[test]
fn a_checkpoint_of_another_configuration_is_refused() {
    let data = bundled(200);
    let cfg = small(ShiftKind::Q, OptimizerKind::Sgd);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        save_to: Some(dir.path()),
        ..Default::default()
    };
    run(&cfg, &data, 1, &opts);
    let other = TrainConfig { lr: 0.01, ..cfg };
    let err = try_run(
        &other,
        &data,
        2,
        &RunOptions {
            resume_from: Some(dir.path()),
            ..Default::default()
        },
    )
    .expect_err("mismatch is an error");
    assert!(
        err.to_string().contains("belongs to another configuration"),
        "{err}"
    );
}

#[test]
fn divergence_is_a_failed_trial_not_a_crash() {
    let data = bundled(200);
    let cfg = TrainConfig {
        shift_depth: 0,
        lr: 1e12,
        momentum: 0.0,
        weight_decay: 0.0,
        ..small(ShiftKind::Q, OptimizerKind::Sgd)
    };
    let r = run(&cfg, &data, 3, &RunOptions::default());
    assert_eq!(r.status, TrainStatus::Diverged);
    let reason = r.reason.unwrap();
    assert!(reason.contains("training loss became"), "{reason}");
    assert_eq!(r.valid_error, 1.0);
}

#[test]
fn the_shift_regularizer_changes_ps_training_only() {
    let data = bundled(300);
    for kind in [ShiftKind::Ps, ShiftKind::Q] {
        // A weight decay large enough for the term to move some rounded shift in one epoch.
        let on = TrainConfig {
            weight_decay: 0.01,
            ..small(kind, OptimizerKind::Sgd)
        };
        assert!(on.shift_regularizer);
        let off = TrainConfig {
            shift_regularizer: false,
            ..on.clone()
        };
        let a = run(&on, &data, 1, &RunOptions::default());
        let b = run(&off, &data, 1, &RunOptions::default());
        assert_eq!(a.status, TrainStatus::Completed);
        if kind == ShiftKind::Ps {
            assert_ne!(outcome(&a), outcome(&b), "PS shifts are regularized");
        } else {
            assert_eq!(
                outcome(&a),
                outcome(&b),
                "Q layers have no shift parameters"
            );
        }
        assert_eq!(
            outcome(&a),
            outcome(&run(&on, &data, 1, &RunOptions::default()))
        );
    }
}
