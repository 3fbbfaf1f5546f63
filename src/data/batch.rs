//! Batching: one epoch's worth of normalized (and optionally augmented) `f32` batches, filled
//! into reusable buffers, optionally prepared one step ahead on a background thread.
//!
//! Epoch `e`'s order and augmentation depend only on the epoch seed, which `epoch_seed(seed, e)`
//! derives from the run seed alone; so resuming at epoch `b` sees exactly what straight
//! training would have seen.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::augment::{Augment, write_augmented, write_plain};
use super::{DataError, Dataset, Normalization, Split};

/// How many prepared batches may wait for the trainer.
const PREFETCH_DEPTH: usize = 2;

/// Seed of epoch `epoch` of a run seeded `run_seed` (SplitMix64 mixing, so neighbouring epochs
/// and seeds give unrelated streams).
pub fn epoch_seed(run_seed: u64, epoch: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    mix(mix(run_seed) ^ epoch)
}

/// One batch: `images` holds `len` images of `dims` = [C, H, W] as `len*C*H*W` floats (NCHW),
/// `labels` their `len` class ids. Hand it back with `recycle` to reuse its buffers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub len: usize,
    pub dims: [usize; 3],
}

impl Batch {
    /// `[len, C, H, W]`, the tensor shape of `images`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len, self.dims[0], self.dims[1], self.dims[2]]
    }
}

/// The batches of one epoch over a `Split`. An `Iterator<Item = Batch>`; `fill_next` fills a
/// caller-owned batch instead, and `prefetch` moves the work to a background thread.
#[derive(Debug)]
pub struct EpochBatches {
    data: Arc<Dataset>,
    order: Vec<u32>,
    /// One entry per position of `order` when augmenting, else empty.
    augments: Vec<Augment>,
    lut: Vec<f32>,
    batch_size: usize,
    drop_last: bool,
    next: usize,
    spare: Vec<Batch>,
}

impl EpochBatches {
    /// Training batches: `split` shuffled by `epoch_seed` (ChaCha8), with crop+flip
    /// augmentation when `augment`, normalized by `norm`. The last partial batch is kept
    /// (see `drop_last`).
    pub fn new(
        split: &Split,
        batch_size: usize,
        epoch_seed: u64,
        augment: bool,
        norm: &Normalization,
    ) -> Result<Self, DataError> {
        let mut batches = Self::sequential(split, batch_size, norm)?;
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
        batches.order.shuffle(&mut rng);
        // Drawn after the shuffle from the same stream: the order does not depend on `augment`.
        if augment {
            batches.augments = (0..batches.order.len())
                .map(|_| Augment::random(&mut rng))
                .collect();
        }
        Ok(batches)
    }

    /// Evaluation batches: `split` in its own order, no augmentation, last partial batch kept.
    pub fn sequential(
        split: &Split,
        batch_size: usize,
        norm: &Normalization,
    ) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::config("batch_size", "must be at least 1"));
        }
        let data = Arc::clone(split.dataset());
        if norm.channels() != data.channels() || norm.std.len() != data.channels() {
            return Err(DataError::config(
                "normalization",
                format!(
                    "has {} means and {} stds but the images have {} channels",
                    norm.mean.len(),
                    norm.std.len(),
                    data.channels()
                ),
            ));
        }
        Ok(EpochBatches {
            data,
            order: split.indices().to_vec(),
            augments: Vec::new(),
            lut: norm.lookup_table(),
            batch_size,
            drop_last: false,
            next: 0,
            spare: Vec::new(),
        })
    }

    /// Drop the last batch when it has fewer than `batch_size` images.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Batches in the whole epoch.
    pub fn num_batches(&self) -> usize {
        if self.drop_last {
            self.order.len() / self.batch_size
        } else {
            self.order.len().div_ceil(self.batch_size)
        }
    }

    /// Batches not yet produced.
    pub fn remaining(&self) -> usize {
        let end = self.num_batches() * self.batch_size;
        end.min(self.order.len())
            .saturating_sub(self.next)
            .div_ceil(self.batch_size)
    }

    /// Dataset record indices in this epoch's order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Per-position augmentation of this epoch (empty when not augmenting).
    pub fn augments(&self) -> &[Augment] {
        &self.augments
    }

    /// Fills `batch` with the next batch, reusing its allocations; false at the end of the
    /// epoch (batch untouched).
    pub fn fill_next(&mut self, batch: &mut Batch) -> bool {
        if self.remaining() == 0 {
            return false;
        }
        let start = self.next;
        let end = (start + self.batch_size).min(self.order.len());
        self.next = end;
        let dims = self.data.dims();
        let chw = self.data.image_len();
        let n = end - start;
        batch.len = n;
        batch.dims = dims;
        batch.images.resize(n * chw, 0.0);
        batch.labels.clear();
        for (k, (&idx, dst)) in self.order[start..end]
            .iter()
            .zip(batch.images.chunks_exact_mut(chw))
            .enumerate()
        {
            let idx = idx as usize;
            let src = self.data.image(idx);
            match self.augments.get(start + k) {
                Some(&aug) => write_augmented(src, dims, aug, &self.lut, dst),
                None => write_plain(src, dims, &self.lut, dst),
            }
            batch.labels.push(i64::from(self.data.label(idx)));
        }
        true
    }

    /// Gives a used batch back so the iterator refills it instead of allocating.
    pub fn recycle(&mut self, batch: Batch) {
        if self.spare.len() < PREFETCH_DEPTH + 2 {
            self.spare.push(batch);
        }
    }

    /// Moves batch preparation to a background thread that stays up to two batches ahead.
    pub fn prefetch(self) -> Result<Prefetch, DataError> {
        Prefetch::new(self)
    }
}

impl Iterator for EpochBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.remaining() == 0 {
            return None;
        }
        let mut batch = self.spare.pop().unwrap_or_default();
        self.fill_next(&mut batch);
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.remaining();
        (r, Some(r))
    }
}

impl ExactSizeIterator for EpochBatches {}

/// Batches prepared on a background thread (bounded channel of 2). Iterate with
/// `while let Some(b) = prefetch.next() { ...; prefetch.recycle(b) }` so buffers circulate
/// instead of being reallocated. Dropping it early stops and joins the thread.
#[derive(Debug)]
pub struct Prefetch {
    batches: Option<Receiver<Batch>>,
    returns: Sender<Batch>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Prefetch {
    fn new(mut batches: EpochBatches) -> Result<Self, DataError> {
        let remaining = batches.remaining();
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(PREFETCH_DEPTH);
        let (ret_tx, ret_rx) = channel::<Batch>();
        let worker = std::thread::Builder::new()
            .name("dsnn-data-prefetch".into())
            .spawn(move || {
                loop {
                    let mut batch = ret_rx
                        .try_recv()
                        .ok()
                        .or_else(|| batches.spare.pop())
                        .unwrap_or_default();
                    if !batches.fill_next(&mut batch) || tx.send(batch).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| DataError::Thread { source })?;
        Ok(Prefetch {
            batches: Some(rx),
            returns: ret_tx,
            worker: Some(worker),
            remaining,
        })
    }

    /// Hands a used batch back to the worker for refilling.
    pub fn recycle(&self, batch: Batch) {
        // The worker may already be done with the epoch; then the buffer is simply dropped.
        let _ = self.returns.send(batch);
    }

    /// Batches not yet received.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    fn recv(&mut self) -> Option<Batch> {
        let rx = self.batches.as_ref()?;
        match rx.recv() {
            Ok(batch) => {
                self.remaining = self.remaining.saturating_sub(1);
                Some(batch)
            }
            Err(_) => {
                self.batches = None;
                // The worker only hangs up after its last batch, or by panicking: a panic there
                // is a bug that must not pass for a short epoch.
                if let Some(Err(panic)) = self.worker.take().map(JoinHandle::join) {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }
}

impl Iterator for Prefetch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.recv()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Hang up first so a worker blocked on a full channel wakes up and exits.
        self.batches = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
