//! The per-epoch progress bar of training, shown by `train` on its own and by `optimize`
//! under its trial bar.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::train::TrainObserver;

/// An epoch bar (batches, loss, images/s). `keep` leaves finished bars on screen (`train`);
/// otherwise each is cleared when its epoch ends (`optimize`, where trials follow each other).
pub struct EpochBar {
    multi: MultiProgress,
    bar: Option<ProgressBar>,
    keep: bool,
}

impl EpochBar {
    pub fn new(multi: MultiProgress, keep: bool) -> Self {
        Self {
            multi,
            bar: None,
            keep,
        }
    }

    fn close(&mut self) {
        if let Some(bar) = self.bar.take() {
            if self.keep {
                bar.finish();
            } else {
                bar.finish_and_clear();
            }
        }
    }
}

impl TrainObserver for EpochBar {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        self.close();
        let bar = self.multi.add(ProgressBar::new(batches as u64));
        if let Ok(style) = ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len}  {msg}  ({elapsed})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
        self.bar = Some(bar);
    }

    fn batch_end(&mut self, done: usize, loss: f64, images_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            bar.set_message(format!("loss {loss:.4}  {images_per_s:.1} img/s"));
        }
    }

    fn epoch_end(&mut self, _: usize, _: f64, _: Option<f64>) {
        self.close();
    }
}
