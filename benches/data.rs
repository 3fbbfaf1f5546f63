//! Batcher throughput on synthetic CIFAR-shaped data (50,000 images of 3x32x32), batch 128.
//! Criterion's "elem/s" is batches per second.
//!
//! `cargo bench --no-default-features --bench data`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dsnn_hpo::data::{Batch, Dataset, EpochBatches, Normalization, Split, epoch_seed};

const N: usize = 50_000;
const BATCH: usize = 128;

fn cifar_like() -> Split {
    let len = 3 * 32 * 32;
    let images: Vec<u8> = (0..N * len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let labels: Vec<u16> = (0..N).map(|i| (i % 10) as u16).collect();
    let data = Dataset::new(images, labels, [3, 32, 32], 10, vec![]);
    Split::all(Arc::new(
        data.unwrap_or_else(|e| panic!("synthetic dataset: {e}")),
    ))
}

fn bench(c: &mut Criterion) {
    let split = cifar_like();
    let norm = Normalization::from_split(&split);
    let new_epoch = |e: u64, augment: bool| {
        EpochBatches::new(&split, BATCH, epoch_seed(1, e), augment, &norm)
            .unwrap_or_else(|e| panic!("{e}"))
    };

    let mut group = c.benchmark_group("batch128_cifar");
    group.throughput(Throughput::Elements(1));
    for augment in [true, false] {
        let name = if augment {
            "fill_augmented"
        } else {
            "fill_plain"
        };
        group.bench_function(name, |b| {
            let mut epoch = 0;
            let mut eb = new_epoch(epoch, augment);
            let mut batch = Batch::default();
            b.iter(|| {
                if !eb.fill_next(&mut batch) {
                    epoch += 1;
                    eb = new_epoch(epoch, augment);
                    eb.fill_next(&mut batch);
                }
                black_box(&batch.images);
            });
        });
    }
    group.bench_function("prefetch_augmented", |b| {
        let mut epoch = 0;
        let mut pf = new_epoch(epoch, true)
            .prefetch()
            .unwrap_or_else(|e| panic!("{e}"));
        b.iter(|| {
            let batch = match pf.next() {
                Some(batch) => batch,
                None => {
                    epoch += 1;
                    pf = new_epoch(epoch, true)
                        .prefetch()
                        .unwrap_or_else(|e| panic!("{e}"));
                    pf.next().unwrap_or_default()
                }
            };
            black_box(&batch.images);
            pf.recycle(batch);
        });
    });
    group.finish();

    c.bench_function("epoch_setup_50k_shuffle_and_augment_draws", |b| {
        b.iter(|| black_box(new_epoch(7, true).num_batches()));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
