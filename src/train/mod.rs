//! One trial: train a DSNN configuration for a budget of epochs, then measure it on the
//! validation split. Written as burn's custom-training-loop example does (the epoch loop by
//! hand), because the optimizer decides the number of epochs.
//!
//! Reproducibility: epoch `e` reseeds the backend RNG (stochastic rounding) from
//! `(seed, e)` and the data order and augmentation depend only on `(seed, e)` as well, so
//! training `b` epochs, saving, and continuing to `b'` gives what `b'` straight epochs give.

pub mod checkpoint;
pub mod config;
pub mod malloc;
pub mod optim;
pub mod regularizer;

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::{Batch, EpochBatches, LoadedData, Split, epoch_seed};
use crate::model::Network;

pub use config::{Schedule, TrainConfig};

/// Why a trial ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainStatus {
    Completed,
    /// The loss became NaN or infinite; the reason says where.
    Diverged,
}

/// What a trial reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub status: TrainStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Epochs trained in total (including those a continuation started from).
    pub epochs: usize,
    /// Epoch this run started at (0, or the checkpoint's epoch when continuing).
    pub start_epoch: usize,
    /// Mean cross-entropy on the validation split.
    pub valid_loss: f64,
    pub valid_accuracy: f64,
    /// 1 - accuracy, the paper's loss objective.
    pub valid_error: f64,
    /// Mean training loss of the last epoch.
    pub train_loss: f64,
    /// Seconds of this run: training plus validation.
    pub wall_s: f64,
    /// Seconds spent in training steps (data waiting included).
    pub train_s: f64,
    /// Training images per second over this run's epochs.
    pub images_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("the training split is empty")]
    EmptyTrain,
    #[error("the validation split is empty: raise validation_fraction")]
    EmptyValid,
}

/// Hooks for progress displays; every method defaults to nothing.
pub trait TrainObserver {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    fn batch_end(&mut self, _done: usize, _loss: f64, _images_per_s: f64) {}
    fn epoch_end(&mut self, _epoch: usize, _train_loss: f64, _valid_accuracy: Option<f64>) {}
    /// A progress generation after `epochs_done` epochs is being written into `dir` (see
    /// [`RunOptions::progress_to`]): what the observer adds goes with it.
    fn progress_saved(&mut self, _epochs_done: usize, _dir: &Path) -> std::io::Result<()> {
        Ok(())
    }
}

/// An observer that shows nothing.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// Where a run starts from and what it keeps.
#[derive(Debug, Clone, Default)]
pub struct RunOptions<'a> {
    /// Continue from this checkpoint directory (same configuration, fewer epochs).
    pub resume_from: Option<&'a Path>,
    /// Save the final state here for a later continuation.
    pub save_to: Option<&'a Path>,
    /// Publish the state after every epoch but the last here, as progress generations
    /// ([`crate::store::progress`]), for another attempt of the same trial after a crash.
    pub progress_to: Option<&'a Path>,
    /// Also evaluate on the held-out test split (final reports only).
    pub evaluate_test: bool,
}

fn to_tensors(batch: &Batch, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Tensor::<4>::from_data(TensorData::new(batch.images.clone(), batch.shape()), device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(batch.labels.clone(), [batch.len]), device);
    (x, y)
}

/// Mean cross-entropy and accuracy of `model` (in eval mode) on `split`.
pub fn evaluate(
    model: &Network,
    split: &Split,
    data: &LoadedData,
    batch_size: usize,
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut batches = EpochBatches::sequential(split, batch_size.max(1), &data.normalization)?;
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0u64, 0usize);
    let mut batch = Batch::default();
    while batches.fill_next(&mut batch) {
        let (x, y) = to_tensors(&batch, device);
        let logits = model.forward(x);
        let loss = loss_fn.forward(logits.clone(), y.clone());
        let pred = logits.argmax(1).reshape([batch.len]);
        correct += pred.equal(y).int().sum().into_scalar::<i64>() as u64;
        loss_sum += loss.into_scalar::<f32>() as f64 * batch.len as f64;
        seen += batch.len;
    }
    if seen == 0 {
        return Err(TrainError::EmptyValid);
    }
    Ok((loss_sum / seen as f64, correct as f64 / seen as f64))
}

/// Seconds per layer of the table (`layers` rows) and outside them over one inference pass of
/// `split`, each layer timed on its own (see [`crate::model::LayerClock`]).
pub fn profile_layers(
    model: &Network,
    layers: usize,
    split: &Split,
    data: &LoadedData,
    batch_size: usize,
    device: &Device,
) -> Result<(Vec<f64>, f64), TrainError> {
    let mut clock = crate::model::LayerClock::new(layers, device);
    let mut batches = EpochBatches::sequential(split, batch_size.max(1), &data.normalization)?;
    let mut batch = Batch::default();
    let mut seen = 0usize;
    while batches.fill_next(&mut batch) {
        let (x, _) = to_tensors(&batch, device);
        clock.start();
        let logits = model.forward_with(x, &mut clock);
        drop(logits);
        seen += batch.len;
    }
    if seen == 0 {
        return Err(TrainError::EmptyValid);
    }
    Ok((clock.layer_s, clock.other_s))
}

/// The loss a training step differentiates: `loss` (the cross-entropy) plus, when
/// `cfg.shift_regularizer` is on and `cfg.weight_decay > 0`, DeepShift-PS's shift regularizer
/// over the PS shifts of `model` ([`regularizer::shift_l2_norm`]; nothing for Q or float layers).
pub fn training_objective(cfg: &TrainConfig, model: &Network, loss: Tensor<1>) -> Tensor<1> {
    if !cfg.shift_regularizer {
        return loss;
    }
    match regularizer::shift_l2_norm(model, cfg.weight_decay) {
        Some(reg) => loss + reg,
        None => loss,
    }
}

/// Trains `cfg` on `data` up to `epochs` epochs in total.
pub fn train(
    cfg: &TrainConfig,
    data: &LoadedData,
    device: &Device,
    epochs: usize,
    opts: &RunOptions<'_>,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport, TrainError> {
    train_network(cfg, data, device, epochs, opts, observer).map(|(report, _)| report)
}

/// [`train`], also returning the trained network in eval mode (none when training diverged),
/// for measuring it afterwards.
pub fn train_network(
    cfg: &TrainConfig,
    data: &LoadedData,
    device: &Device,
    epochs: usize,
    opts: &RunOptions<'_>,
    observer: &mut dyn TrainObserver,
) -> Result<(TrainReport, Option<Network>), TrainError> {
    cfg.validate()?;
    if data.train.is_empty() {
        return Err(TrainError::EmptyTrain);
    }
    if data.valid.is_empty() {
        return Err(TrainError::EmptyValid);
    }
    let started = Instant::now();
    let spec = cfg.net_spec(data.dims(), data.num_classes())?;
    let ad = device.clone().autodiff();
    // Parameters are initialised from the seed, on the training device.
    ad.seed(epoch_seed(cfg.seed, u64::MAX));
    let mut model = Network::init(&spec, &ad);
    let mut start_epoch = 0;
    if let Some(dir) = opts.resume_from {
        (model, start_epoch) = checkpoint::load_model(dir, cfg, model)?;
    }
    // Built after loading: parameter groups (no decay for PS) are keyed by parameter id.
    let mut optim: ModuleOptimizer = optim::build(&cfg.optimizer_settings(), &model);
    if let Some(dir) = opts.resume_from {
        optim = checkpoint::load_optimizer(dir, optim)?;
    }
    let epochs = epochs.max(start_epoch);
    let horizon = cfg.schedule_epochs.unwrap_or(epochs).max(epochs);
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let steps_per_epoch = data.train.len().div_ceil(cfg.batch_size);

    let mut train_s = 0.0;
    let mut images = 0usize;
    let mut train_loss = f64::NAN;
    for epoch in start_epoch..epochs {
        let seed = epoch_seed(cfg.seed, epoch as u64);
        ad.seed(seed);
        let batches = EpochBatches::new(
            &data.train,
            cfg.batch_size,
            seed,
            data.augment,
            &data.normalization,
        )?;
        observer.epoch_start(epoch, epochs, batches.num_batches());
        let mut prefetch = batches.prefetch()?;
        let epoch_start = Instant::now();
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        let mut step = 0usize;
        while let Some(batch) = prefetch.next() {
            let global_step = epoch * steps_per_epoch + step;
            let lr = cfg
                .schedule
                .lr(cfg.lr, global_step, horizon * steps_per_epoch);
            let (x, y) = to_tensors(&batch, &ad);
            let n = batch.len;
            prefetch.recycle(batch);
            let drop =
                crate::model::DropConnect::for_step(cfg.drop_connect, cfg.seed, global_step as u64);
            let logits = model.forward_train(x, drop.as_ref());
            let loss = loss_fn.forward(logits, y);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                let reason = format!(
                    "training loss became {loss_value} at epoch {} step {}",
                    epoch + 1,
                    step + 1
                );
                return Ok((
                    diverged(reason, epoch, start_epoch, started, train_s, images),
                    None,
                ));
            }
            // The fork logs the cross-entropy and adds the shift regularizer after.
            let objective = training_objective(cfg, &model, loss);
            let grads = GradientsParams::from_grads(objective.backward(), &model);
            model = optim.step(lr, model, grads);
            loss_sum += loss_value * n as f64;
            seen += n;
            step += 1;
            let elapsed = train_s + epoch_start.elapsed().as_secs_f64();
            observer.batch_end(
                step,
                loss_sum / seen as f64,
                (images + seen) as f64 / elapsed,
            );
        }
        train_s += epoch_start.elapsed().as_secs_f64();
        images += seen;
        train_loss = loss_sum / seen.max(1) as f64;
        observer.epoch_end(epoch, train_loss, None);
        if let Some(root) = opts.progress_to
            && epoch + 1 < epochs
        {
            let done = epoch + 1;
            crate::store::progress::publish(root, done as u64, |tmp| {
                checkpoint::save(tmp, cfg, &model, &optim, done).map_err(std::io::Error::other)?;
                observer.progress_saved(done, tmp)
            })
            .map_err(|e| checkpoint::CheckpointError::Io {
                path: root.to_path_buf(),
                message: format!("cannot save the progress after epoch {done}: {e}"),
            })?;
        }
    }

    let eval_model = model.valid();
    let inner = device.clone();
    let (valid_loss, valid_accuracy) = evaluate(
        &eval_model,
        &data.valid,
        data,
        cfg.batch_size.max(256),
        &inner,
    )?;
    if !valid_loss.is_finite() {
        let reason = format!("validation loss is {valid_loss}");
        return Ok((
            diverged(reason, epochs, start_epoch, started, train_s, images),
            None,
        ));
    }
    let (test_loss, test_accuracy) = if opts.evaluate_test && !data.test.is_empty() {
        let (l, a) = evaluate(
            &eval_model,
            &data.test,
            data,
            cfg.batch_size.max(256),
            &inner,
        )?;
        (Some(l), Some(a))
    } else {
        (None, None)
    };
    if let Some(dir) = opts.save_to {
        checkpoint::save(dir, cfg, &model, &optim, epochs)?;
    }
    let report = TrainReport {
        status: TrainStatus::Completed,
        reason: None,
        epochs,
        start_epoch,
        valid_loss,
        valid_accuracy,
        valid_error: 1.0 - valid_accuracy,
        train_loss,
        wall_s: started.elapsed().as_secs_f64(),
        train_s,
        images_per_s: rate(images, train_s),
        test_accuracy,
        test_loss,
    };
    Ok((report, Some(eval_model)))
}

fn rate(images: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        images as f64 / seconds
    } else {
        0.0
    }
}

fn diverged(
    reason: String,
    epoch: usize,
    start_epoch: usize,
    started: Instant,
    train_s: f64,
    images: usize,
) -> TrainReport {
    TrainReport {
        status: TrainStatus::Diverged,
        reason: Some(reason),
        epochs: epoch,
        start_epoch,
        valid_loss: f64::NAN,
        valid_accuracy: 0.0,
        valid_error: 1.0,
        train_loss: f64::NAN,
        wall_s: started.elapsed().as_secs_f64(),
        train_s,
        images_per_s: rate(images, train_s),
        test_accuracy: None,
        test_loss: None,
    }
}
