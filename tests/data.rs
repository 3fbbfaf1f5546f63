//! Data side: readers on files generated in a temp dir, error reporting, split, normalization,
//! augmentation, batching, the bundled set, and (when present) the real shared data files.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dsnn_hpo::data::augment::{Augment, PAD, write_augmented};
use dsnn_hpo::data::bundled;
use dsnn_hpo::data::idx::{encode_images, encode_labels, gzip};
use dsnn_hpo::data::{
    Batch, DataConfig, DataError, Dataset, DatasetKind, EpochBatches, Normalization, Split,
    epoch_seed, validation_split,
};

// ---------------------------------------------------------------------------------------------
// File builders

/// Pixel `j` of synthetic image `i`: varied, and distinct between images.
fn px(i: usize, j: usize) -> u8 {
    ((i * 31 + j * 7 + (j / 97) * 3) % 256) as u8
}

fn cifar10_bytes(first: usize, labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, &l) in labels.iter().enumerate() {
        out.push(l);
        out.extend((0..3072).map(|j| px(first + k, j)));
    }
    out
}

fn cifar100_bytes(labels: &[(u8, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, &(coarse, fine)) in labels.iter().enumerate() {
        out.push(coarse);
        out.push(fine);
        out.extend((0..3072).map(|j| px(k, j)));
    }
    out
}

fn idx_pixels(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0..rows * cols).map(move |j| px(i, j)))
        .collect()
}

/// Writes a small MNIST-style folder: 6 train images (plain files), 4 test images (gzipped).
fn write_idx_dir(dir: &Path, rows: usize, cols: usize) -> (Vec<u8>, Vec<u8>) {
    let train_labels = vec![3u8, 1, 4, 1, 5, 9];
    let test_labels = vec![2u8, 6, 5, 3];
    fs::write(
        dir.join("train-images-idx3-ubyte"),
        encode_images(rows, cols, &idx_pixels(6, rows, cols)),
    )
    .unwrap();
    fs::write(
        dir.join("train-labels-idx1-ubyte"),
        encode_labels(&train_labels),
    )
    .unwrap();
    fs::write(
        dir.join("t10k-images-idx3-ubyte.gz"),
        gzip(&encode_images(rows, cols, &idx_pixels(4, rows, cols))).unwrap(),
    )
    .unwrap();
    fs::write(
        dir.join("t10k-labels-idx1-ubyte.gz"),
        gzip(&encode_labels(&test_labels)).unwrap(),
    )
    .unwrap();
    (train_labels, test_labels)
}

fn write_cifar10_dir(root: &Path) -> PathBuf {
    let dir = root.join("cifar-10-batches-bin");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("data_batch_1.bin"), cifar10_bytes(0, &[6, 9, 9])).unwrap();
    fs::write(dir.join("data_batch_3.bin"), cifar10_bytes(3, &[4, 1])).unwrap();
    fs::write(dir.join("test_batch.bin"), cifar10_bytes(100, &[3, 8])).unwrap();
    dir
}

/// A dataset whose image `i` has first pixel `i` (so a batch reveals which records it holds).
fn synthetic(n: usize, dims: [usize; 3], num_classes: usize) -> Arc<Dataset> {
    let len = dims.iter().product::<usize>();
    let mut images = Vec::with_capacity(n * len);
    for i in 0..n {
        images.push(i as u8);
        images.extend((1..len).map(|j| px(i, j)));
    }
    let labels = (0..n).map(|i| (i % num_classes) as u16).collect();
    Arc::new(Dataset::new(images, labels, dims, num_classes, vec![]).unwrap())
}

fn all_batches(b: impl Iterator<Item = Batch>) -> Vec<Batch> {
    b.collect()
}

// ---------------------------------------------------------------------------------------------
// Readers: exact round trips

#[test]
fn cifar10_round_trips_from_archive_folder_and_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar10_dir(tmp.path());
    for path in [tmp.path(), dir.as_path()] {
        let tt = DatasetKind::Cifar10.read(Some(path)).unwrap();
        // Batches 1 and 3 exist (2, 4, 5 do not): read in order, and reported.
        assert_eq!(
            tt.train.sources(),
            &[dir.join("data_batch_1.bin"), dir.join("data_batch_3.bin")]
        );
        assert_eq!(tt.test.sources(), &[dir.join("test_batch.bin")]);
        assert_eq!(tt.train.labels(), &[6, 9, 9, 4, 1]);
        assert_eq!(tt.test.labels(), &[3, 8]);
        assert_eq!(tt.train.dims(), [3, 32, 32]);
        assert_eq!(tt.train.num_classes(), 10);
        for i in 0..5 {
            let expect: Vec<u8> = (0..3072).map(|j| px(i, j)).collect();
            assert_eq!(tt.train.image(i), expect.as_slice(), "train image {i}");
        }
        // Record bytes are R plane, G plane, B plane, rows of 32: already CHW.
        let img = tt.test.image(1);
        let (c, y, x) = (2, 5, 17);
        assert_eq!(img[c * 1024 + y * 32 + x], px(101, 2 * 1024 + 5 * 32 + 17));
    }
}

#[test]
fn cifar100_round_trips_with_fine_labels() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("train.bin"),
        cifar100_bytes(&[(0, 99), (19, 0), (5, 42)]),
    )
    .unwrap();
    fs::write(tmp.path().join("test.bin"), cifar100_bytes(&[(3, 7)])).unwrap();
    let tt = DatasetKind::Cifar100.read(Some(tmp.path())).unwrap();
    assert_eq!(tt.train.labels(), &[99, 0, 42]);
    assert_eq!(tt.test.labels(), &[7]);
    assert_eq!(tt.train.num_classes(), 100);
    assert_eq!(tt.train.dims(), [3, 32, 32]);
    let expect: Vec<u8> = (0..3072).map(|j| px(2, j)).collect();
    assert_eq!(tt.train.image(2), expect.as_slice());
}

#[test]
fn idx_round_trips_plain_and_gzipped_for_both_mnist_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_labels, test_labels) = write_idx_dir(tmp.path(), 5, 4);
    for kind in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
        let tt = kind.read(Some(tmp.path())).unwrap();
        assert_eq!(tt.train.dims(), [1, 5, 4]);
        let as_u16 = |v: &[u8]| v.iter().map(|&l| u16::from(l)).collect::<Vec<_>>();
        assert_eq!(tt.train.labels(), as_u16(&train_labels).as_slice());
        assert_eq!(tt.test.labels(), as_u16(&test_labels).as_slice());
        assert_eq!(tt.train.images(), idx_pixels(6, 5, 4).as_slice());
        assert_eq!(tt.test.images(), idx_pixels(4, 5, 4).as_slice());
        assert_eq!(
            tt.test.sources()[0],
            tmp.path().join("t10k-images-idx3-ubyte.gz")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Readers: broken files

fn read_err(kind: DatasetKind, dir: &Path) -> DataError {
    kind.read(Some(dir)).unwrap_err()
}

#[test]
fn missing_files_list_the_names_looked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let err = read_err(DatasetKind::Cifar10, tmp.path());
    let msg = err.to_string();
    assert!(matches!(err, DataError::MissingFile { .. }), "{msg}");
    for i in 1..=5 {
        assert!(msg.contains(&format!("data_batch_{i}.bin")), "{msg}");
    }

    // Training batch present, test batch missing.
    fs::write(tmp.path().join("data_batch_2.bin"), cifar10_bytes(0, &[1])).unwrap();
    let msg = read_err(DatasetKind::Cifar10, tmp.path()).to_string();
    assert!(msg.contains("test_batch.bin"), "{msg}");

    let msg = read_err(DatasetKind::Cifar100, tmp.path()).to_string();
    assert!(msg.contains("train.bin"), "{msg}");

    fs::write(
        tmp.path().join("train-images-idx3-ubyte"),
        encode_images(2, 2, &[0; 4]),
    )
    .unwrap();
    let err = read_err(DatasetKind::Mnist, tmp.path());
    let msg = err.to_string();
    assert!(
        msg.contains("train-labels-idx1-ubyte, train-labels-idx1-ubyte.gz"),
        "{msg}"
    );
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");

    let nowhere = tmp.path().join("no-such-folder");
    let err = read_err(DatasetKind::Mnist, &nowhere);
    assert!(matches!(err, DataError::NotADirectory { .. }), "{err}");
    assert!(err.to_string().contains("no-such-folder"));
}

#[test]
fn wrong_idx_magic_names_expected_and_found() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx_dir(tmp.path(), 5, 4);
    // Labels where the images belong.
    fs::write(
        tmp.path().join("train-images-idx3-ubyte"),
        encode_labels(&[1, 2]),
    )
    .unwrap();
    let err = read_err(DatasetKind::Mnist, tmp.path());
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: 0x803,
                found: 0x801,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(
        msg.contains("0x00000803") && msg.contains("0x00000801"),
        "{msg}"
    );

    // And images where the labels belong.
    write_idx_dir(tmp.path(), 5, 4);
    fs::write(
        tmp.path().join("train-labels-idx1-ubyte"),
        encode_images(5, 4, &idx_pixels(6, 5, 4)),
    )
    .unwrap();
    let msg = read_err(DatasetKind::Mnist, tmp.path()).to_string();
    assert!(
        msg.contains("expected 0x00000801, found 0x00000803"),
        "{msg}"
    );
}

#[test]
fn truncated_files_report_record_and_file_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar10_dir(tmp.path());
    let mut bytes = cifar10_bytes(0, &[1, 2]);
    bytes.truncate(2 * 3073 - 5);
    fs::write(dir.join("data_batch_1.bin"), &bytes).unwrap();
    let err = read_err(DatasetKind::Cifar10, tmp.path());
    assert!(
        matches!(
            err,
            DataError::PartialRecord {
                record_size: 3073,
                file_size: 6141,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("data_batch_1.bin") && msg.contains("6141") && msg.contains("3073"));

    // A CIFAR-10 file is not a whole number of CIFAR-100 records.
    fs::write(tmp.path().join("train.bin"), cifar10_bytes(0, &[1, 2])).unwrap();
    fs::write(tmp.path().join("test.bin"), cifar100_bytes(&[(0, 0)])).unwrap();
    let err = read_err(DatasetKind::Cifar100, tmp.path());
    assert!(
        matches!(
            err,
            DataError::PartialRecord {
                record_size: 3074,
                file_size: 6146,
                ..
            }
        ),
        "{err}"
    );

    // IDX: header promises 4 test images of 5x4, the file is 7 bytes short.
    let idx = tempfile::tempdir().unwrap();
    write_idx_dir(idx.path(), 5, 4);
    let mut img = encode_images(5, 4, &idx_pixels(4, 5, 4));
    img.truncate(img.len() - 7);
    fs::write(
        idx.path().join("t10k-images-idx3-ubyte.gz"),
        gzip(&img).unwrap(),
    )
    .unwrap();
    let err = read_err(DatasetKind::FashionMnist, idx.path());
    assert!(
        matches!(
            err,
            DataError::IdxSize {
                items: 4,
                item_size: 20,
                expected: 96,
                file_size: 89,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("t10k-images-idx3-ubyte.gz"));

    // A damaged gzip stream is an I/O error naming the file, not a panic.
    let mut gz = gzip(&encode_labels(&[1, 2, 3, 4])).unwrap();
    gz.truncate(gz.len() / 2);
    fs::write(idx.path().join("t10k-labels-idx1-ubyte.gz"), gz).unwrap();
    write_idx_dir_test_images(idx.path());
    let err = read_err(DatasetKind::FashionMnist, idx.path());
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("t10k-labels-idx1-ubyte.gz"));
}

fn write_idx_dir_test_images(dir: &Path) {
    fs::write(
        dir.join("t10k-images-idx3-ubyte.gz"),
        gzip(&encode_images(5, 4, &idx_pixels(4, 5, 4))).unwrap(),
    )
    .unwrap();
}

#[test]
fn absurd_idx_dimensions_are_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx_dir(tmp.path(), 5, 4);
    let mut bytes = Vec::new();
    for v in [0x803u32, u32::MAX, 65_535, 65_535] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.extend_from_slice(&[0; 64]);
    fs::write(tmp.path().join("train-images-idx3-ubyte"), bytes).unwrap();
    let err = read_err(DatasetKind::Mnist, tmp.path());
    assert!(
        matches!(err, DataError::IdxSize { .. } | DataError::IdxDims { .. }),
        "{err}"
    );
}

#[test]
fn labels_out_of_range_name_record_value_and_maximum() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar10_dir(tmp.path());
    fs::write(dir.join("data_batch_3.bin"), cifar10_bytes(3, &[4, 10])).unwrap();
    let err = read_err(DatasetKind::Cifar10, tmp.path());
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 1,
                value: 10,
                max: 9,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("data_batch_3.bin"));

    let c100 = tempfile::tempdir().unwrap();
    fs::write(
        c100.path().join("train.bin"),
        cifar100_bytes(&[(0, 1), (1, 2), (2, 100)]),
    )
    .unwrap();
    fs::write(c100.path().join("test.bin"), cifar100_bytes(&[(0, 0)])).unwrap();
    let err = read_err(DatasetKind::Cifar100, c100.path());
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 2,
                which: "fine",
                value: 100,
                max: 99,
                ..
            }
        ),
        "{err}"
    );

    let idx = tempfile::tempdir().unwrap();
    write_idx_dir(idx.path(), 5, 4);
    fs::write(
        idx.path().join("train-labels-idx1-ubyte"),
        encode_labels(&[0, 1, 2, 3, 12, 5]),
    )
    .unwrap();
    let err = read_err(DatasetKind::Mnist, idx.path());
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 4,
                value: 12,
                max: 9,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("train-labels-idx1-ubyte"));
}

#[test]
fn image_and_label_counts_must_match() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx_dir(tmp.path(), 5, 4);
    fs::write(
        tmp.path().join("train-labels-idx1-ubyte"),
        encode_labels(&[1, 2, 3]),
    )
    .unwrap();
    let err = read_err(DatasetKind::Mnist, tmp.path());
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 6,
                labels: 3,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("train-images-idx3-ubyte") && msg.contains("train-labels-idx1-ubyte"));
}

#[test]
fn train_and_test_shapes_must_agree() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx_dir(tmp.path(), 5, 4);
    fs::write(
        tmp.path().join("t10k-images-idx3-ubyte.gz"),
        gzip(&encode_images(4, 5, &idx_pixels(4, 4, 5))).unwrap(),
    )
    .unwrap();
    let cfg = DataConfig {
        kind: DatasetKind::Mnist,
        path: Some(tmp.path().to_path_buf()),
        ..DataConfig::default()
    };
    let err = cfg.load().unwrap_err();
    assert!(matches!(err, DataError::ShapeMismatch { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn config_parses_with_defaults_and_rejects_unknown_fields() {
    let cfg: DataConfig = toml::from_str("kind = \"fashion-mnist\"\npath = \"/data/fm\"").unwrap();
    assert_eq!(cfg.kind, DatasetKind::FashionMnist);
    assert_eq!(cfg.validation_fraction, 0.1);
    assert_eq!(cfg.split_seed, 0);
    assert!(cfg.stratify);
    assert_eq!(cfg.augment, None);
    assert_eq!(cfg.limit_train, None);

    let err = toml::from_str::<DataConfig>("kind = \"bundled\"\nvalid_fraction = 0.2").unwrap_err();
    assert!(err.to_string().contains("valid_fraction"), "{err}");
    let err = toml::from_str::<DataConfig>("kind = \"svhn\"").unwrap_err();
    assert!(err.to_string().contains("svhn"), "{err}");

    assert_eq!(
        "cifar100".parse::<DatasetKind>().unwrap(),
        DatasetKind::Cifar100
    );
    assert!(
        "cifar"
            .parse::<DatasetKind>()
            .unwrap_err()
            .to_string()
            .contains("kind")
    );
    // Serialized form round-trips.
    let back: DataConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn bad_config_values_name_the_field() {
    let field_of = |cfg: DataConfig| match cfg.load().unwrap_err() {
        DataError::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    };
    for f in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let cfg = DataConfig {
            validation_fraction: f,
            ..DataConfig::default()
        };
        assert_eq!(field_of(cfg), "validation_fraction", "{f}");
    }
    let cfg = DataConfig {
        kind: DatasetKind::Cifar10,
        ..DataConfig::default()
    };
    assert_eq!(field_of(cfg), "path");
    let cfg = DataConfig {
        path: Some("/somewhere".into()),
        ..DataConfig::default()
    };
    assert_eq!(field_of(cfg), "path");
    let cfg = DataConfig {
        limit_train: Some(0),
        ..DataConfig::default()
    };
    assert_eq!(field_of(cfg), "limit_train");
    // A fraction that leaves an empty part is reported against the fraction.
    let cfg = DataConfig {
        limit_train: Some(4),
        validation_fraction: 0.1,
        ..DataConfig::default()
    };
    let err = cfg.load().unwrap_err();
    assert!(err.to_string().contains("validation_fraction"), "{err}");
}

#[test]
fn load_cifar10_with_limit_and_default_augmentation() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar10_dir(tmp.path());
    let cfg = DataConfig {
        kind: DatasetKind::Cifar10,
        path: Some(tmp.path().to_path_buf()),
        validation_fraction: 0.25,
        limit_train: Some(4),
        stratify: false,
        ..DataConfig::default()
    };
    let data = cfg.load().unwrap();
    assert!(data.augment, "augmentation is on by default for CIFAR");
    assert_eq!(data.dims(), [3, 32, 32]);
    assert_eq!(data.num_classes(), 10);
    assert_eq!(
        (data.train.len(), data.valid.len(), data.test.len()),
        (3, 1, 2)
    );
    assert_eq!(
        data.train.dataset().len(),
        4,
        "limit applies before the split"
    );
    let desc = data.describe();
    assert!(
        desc.contains("3 train / 1 valid / 2 test") && desc.contains("data_batch_3.bin"),
        "{desc}"
    );
    let off = DataConfig {
        augment: Some(false),
        ..cfg
    };
    assert!(!off.load().unwrap().augment);
}

// ---------------------------------------------------------------------------------------------
// Validation split

#[test]
fn split_sizes_are_round_f_n_deterministic_and_disjoint() {
    for (n, f, expect) in [
        (101usize, 0.1, 10usize),
        (25, 0.3, 8),
        (10, 0.5, 5),
        (7, 0.8, 6),
    ] {
        let labels: Vec<u16> = (0..n).map(|i| (i * 7 % 10) as u16).collect();
        for stratified in [false, true] {
            let (train, valid) = validation_split(&labels, 10, f, 11, stratified).unwrap();
            assert_eq!(valid.len(), expect, "n {n} f {f} stratified {stratified}");
            assert_eq!(train.len(), n - expect);
            let again = validation_split(&labels, 10, f, 11, stratified).unwrap();
            assert_eq!((train.clone(), valid.clone()), again);
            let t: HashSet<u32> = train.iter().copied().collect();
            let v: HashSet<u32> = valid.iter().copied().collect();
            assert!(t.is_disjoint(&v));
            assert_eq!(t.len() + v.len(), n);
            assert!(t.union(&v).all(|&i| (i as usize) < n));
            assert!(train.windows(2).all(|w| w[0] < w[1]), "sorted");
        }
    }
    let labels: Vec<u16> = (0..1000).map(|i| (i % 10) as u16).collect();
    let a = validation_split(&labels, 10, 0.1, 1, false).unwrap();
    let b = validation_split(&labels, 10, 0.1, 2, false).unwrap();
    assert_ne!(a.1, b.1, "different seeds give different splits");
    // Too few records for both parts.
    assert!(validation_split(&labels[..3], 10, 0.1, 1, false).is_err());
}

// ---------------------------------------------------------------------------------------------
// Normalization

#[test]
fn normalization_is_hand_checkable() {
    // Channel 0 alternates 0 and 255 (mean .5, std .5); channel 1 is constant 51 (std -> 1).
    let dims = [2, 1, 2];
    let images = vec![0, 255, 51, 51, 255, 0, 51, 51];
    let data = Arc::new(Dataset::new(images, vec![0, 1], dims, 2, vec![]).unwrap());
    let norm = Normalization::from_split(&Split::all(data));
    assert_eq!(norm.mean, vec![0.5, 0.2]);
    assert_eq!(norm.std, vec![0.5, 1.0]);
    assert_eq!(norm.apply(0, 255), 1.0);
    assert_eq!(norm.apply(0, 0), -1.0);
    assert_eq!(norm.apply(1, 51), 0.0);
}

#[test]
fn normalized_train_part_has_mean_zero_std_one() {
    let data = synthetic(200, [3, 8, 8], 10);
    let (train_idx, _) = validation_split(data.labels(), 10, 0.2, 5, true).unwrap();
    let train = Split::new(Arc::clone(&data), train_idx).unwrap();
    let norm = Normalization::from_split(&train);
    let plane = 64;
    let (mut sum, mut sq, mut count) = ([0f64; 3], [0f64; 3], 0f64);
    for b in EpochBatches::sequential(&train, 32, &norm).unwrap() {
        for img in b.images.chunks_exact(3 * plane) {
            for c in 0..3 {
                for &v in &img[c * plane..(c + 1) * plane] {
                    sum[c] += f64::from(v);
                    sq[c] += f64::from(v) * f64::from(v);
                }
            }
            count += plane as f64;
        }
    }
    for c in 0..3 {
        let mean = sum[c] / count;
        let std = (sq[c] / count - mean * mean).sqrt();
        assert!(mean.abs() < 1e-4, "channel {c} mean {mean}");
        assert!((std - 1.0).abs() < 1e-4, "channel {c} std {std}");
    }
}

// ---------------------------------------------------------------------------------------------
// Augmentation

#[test]
fn crop_and_flip_on_a_hand_made_image() {
    // 1 channel 4x4, pixels 1..=16; table maps byte v to v so outputs read as bytes.
    let src: Vec<u8> = (1..=16).collect();
    let lut: Vec<f32> = (0..256).map(|v| v as f32).collect();
    let run = |aug| {
        let mut dst = vec![-1.0f32; 16];
        write_augmented(&src, [1, 4, 4], aug, &lut, &mut dst);
        dst.iter().map(|&v| v as u8).collect::<Vec<u8>>()
    };
    // Window one row down, one column left of centre: out(y, x) = in(y + 1, x - 1).
    let shifted = Augment {
        top: PAD as u8 + 1,
        left: PAD as u8 - 1,
        flip: false,
    };
    #[rustfmt::skip]
    assert_eq!(run(shifted), vec![
        0, 5, 6, 7,
        0, 9, 10, 11,
        0, 13, 14, 15,
        0, 0, 0, 0,
    ]);
    #[rustfmt::skip]
    assert_eq!(run(Augment { flip: true, ..shifted }), vec![
        7, 6, 5, 0,
        11, 10, 9, 0,
        15, 14, 13, 0,
        0, 0, 0, 0,
    ]);
    #[rustfmt::skip]
    assert_eq!(run(Augment { flip: true, ..Augment::IDENTITY }), vec![
        4, 3, 2, 1,
        8, 7, 6, 5,
        12, 11, 10, 9,
        16, 15, 14, 13,
    ]);
    // Corner window: only in(0, 0) survives, at out(3, 3).
    let corner = run(Augment {
        top: 1,
        left: 1,
        flip: false,
    });
    assert_eq!(corner.iter().filter(|&&v| v != 0).count(), 1);
    assert_eq!(corner[15], 1);
}

#[test]
fn augmented_batch_of_one_cifar_image_matches_its_drawn_crop_and_flip() {
    let data = synthetic(1, [3, 32, 32], 10);
    let split = Split::all(Arc::clone(&data));
    let norm = Normalization::identity(3);
    let mut saw = HashSet::new();
    for epoch in 0..40 {
        let eb = EpochBatches::new(&split, 8, epoch_seed(9, epoch), true, &norm).unwrap();
        let aug = eb.augments()[0];
        assert!(aug.top <= 8 && aug.left <= 8);
        saw.insert((aug.top != PAD as u8 || aug.left != PAD as u8, aug.flip));
        let batch: Vec<Batch> = eb.collect();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].shape(), [1, 3, 32, 32]);
        assert_eq!(batch[0].images.len(), 3 * 32 * 32);
        // Independent per-pixel check: pad by 4, crop at (top, left), then mirror.
        let src = data.image(0);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let cx = if aug.flip { 31 - x } else { x };
                    let (py, px_) = (y + aug.top as usize, cx + aug.left as usize);
                    let inside = (PAD..PAD + 32).contains(&py) && (PAD..PAD + 32).contains(&px_);
                    let want = if inside {
                        src[c * 1024 + (py - PAD) * 32 + (px_ - PAD)]
                    } else {
                        0
                    };
                    let got = batch[0].images[c * 1024 + y * 32 + x] * 255.0;
                    assert!(
                        (got - f32::from(want)).abs() < 1e-3,
                        "epoch {epoch} {aug:?}"
                    );
                }
            }
        }
    }
    assert_eq!(
        saw.len(),
        4,
        "shifted/unshifted x flipped/unflipped all occur"
    );
}

#[test]
fn epochs_depend_only_on_seed_and_epoch() {
    let data = synthetic(50, [3, 6, 6], 5);
    let split = Split::all(data);
    let norm = Normalization::from_split(&split);
    let epoch = |seed, e, augment| {
        all_batches(EpochBatches::new(&split, 16, epoch_seed(seed, e), augment, &norm).unwrap())
    };
    // Straight training 0..4 vs. resuming at 3: epoch 3 is identical.
    let straight: Vec<Vec<Batch>> = (0..4).map(|e| epoch(7, e, true)).collect();
    assert_eq!(straight[3], epoch(7, 3, true));
    assert_ne!(straight[2], straight[3]);
    assert_ne!(epoch(8, 3, true), straight[3]);
    // The order does not depend on the augmentation switch.
    let plain = epoch(7, 3, false);
    let labels = |b: &[Batch]| b.iter().flat_map(|b| b.labels.clone()).collect::<Vec<_>>();
    assert_eq!(labels(&plain), labels(&straight[3]));
    assert_ne!(plain, straight[3]);
    assert_ne!(epoch_seed(1, 0), epoch_seed(1, 1));
    assert_ne!(epoch_seed(0, 1), epoch_seed(1, 0));
}

// ---------------------------------------------------------------------------------------------
// Batching

/// Record ids in a batch, read back from each image's first pixel (identity normalization).
fn ids(b: &Batch) -> Vec<usize> {
    let chw = b.dims.iter().product::<usize>();
    b.images
        .chunks_exact(chw)
        .map(|img| (img[0] * 255.0).round() as usize)
        .collect()
}

#[test]
fn batches_cover_every_sample_exactly_once() {
    let data = synthetic(103, [1, 4, 4], 10);
    let split = Split::all(Arc::clone(&data));
    let norm = Normalization::identity(1);
    let eb = EpochBatches::new(&split, 10, epoch_seed(3, 0), false, &norm).unwrap();
    assert_eq!(eb.num_batches(), 11);
    let batches = all_batches(eb);
    assert_eq!(batches.len(), 11);
    assert_eq!(batches.last().unwrap().len, 3, "last partial batch kept");
    let mut seen = Vec::new();
    for b in &batches {
        assert_eq!(b.images.len(), b.len * 16);
        assert_eq!(b.labels.len(), b.len);
        for (id, &label) in ids(b).into_iter().zip(&b.labels) {
            assert_eq!(label, (id % 10) as i64, "label travels with its image");
            seen.push(id);
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..103).collect::<Vec<_>>());
    assert_ne!(seen, sorted, "training order is shuffled");

    let dropped = EpochBatches::new(&split, 10, epoch_seed(3, 0), false, &norm)
        .unwrap()
        .drop_last(true);
    assert_eq!(dropped.num_batches(), 10);
    let batches = all_batches(dropped);
    assert!(batches.iter().all(|b| b.len == 10));
    let distinct: HashSet<usize> = batches.iter().flat_map(ids).collect();
    assert_eq!(distinct.len(), 100);

    // Evaluation order is the split's own, only over its records.
    let sub = Split::new(data, vec![5, 9, 40, 41, 77]).unwrap();
    let eval = all_batches(EpochBatches::sequential(&sub, 2, &norm).unwrap());
    assert_eq!(
        eval.iter().flat_map(ids).collect::<Vec<_>>(),
        vec![5, 9, 40, 41, 77]
    );
    assert!(EpochBatches::sequential(&sub, 0, &norm).is_err());
    assert!(EpochBatches::sequential(&sub, 2, &Normalization::identity(3)).is_err());
}

#[test]
fn recycled_buffers_are_refilled_without_stale_data() {
    let data = synthetic(25, [3, 4, 4], 10);
    let split = Split::all(data);
    let norm = Normalization::identity(3);
    let mut eb = EpochBatches::new(&split, 10, 1, true, &norm).unwrap();
    let expected = all_batches(EpochBatches::new(&split, 10, 1, true, &norm).unwrap());
    let mut got = Vec::new();
    while let Some(b) = eb.next() {
        got.push(b.clone());
        let ptr = b.images.as_ptr();
        eb.recycle(b);
        if let Some(next) = eb.next() {
            assert_eq!(next.images.as_ptr(), ptr, "buffer reused");
            got.push(next.clone());
            eb.recycle(next);
        }
    }
    assert_eq!(got, expected);
    assert_eq!(got[2].len, 5);
    assert_eq!(got[2].images.len(), 5 * 48, "shrunk to the partial batch");
}

#[test]
fn prefetch_gives_the_same_batches_and_stops_cleanly() {
    let data = synthetic(70, [3, 8, 8], 10);
    let split = Split::all(data);
    let norm = Normalization::from_split(&split);
    let make = || EpochBatches::new(&split, 8, epoch_seed(4, 2), true, &norm).unwrap();
    let expected = all_batches(make());
    let mut pf = make().prefetch().unwrap();
    assert_eq!(pf.remaining(), 9);
    let mut got = Vec::new();
    while let Some(b) = pf.next() {
        got.push(b.clone());
        pf.recycle(b);
    }
    assert_eq!(got, expected);
    assert_eq!(pf.remaining(), 0);
    assert!(pf.next().is_none());

    // Dropped after one batch while the worker is blocked on a full channel: must not hang.
    let mut early = make().prefetch().unwrap();
    assert!(early.next().is_some());
    drop(early);
}

// ---------------------------------------------------------------------------------------------
// Bundled set

#[test]
fn bundled_set_has_the_expected_counts_and_classes() {
    let data = DataConfig::default().load().unwrap();
    assert_eq!(data.kind, DatasetKind::Bundled);
    assert_eq!(data.dims(), [1, 28, 28]);
    assert_eq!(data.num_classes(), 10);
    assert!(!data.augment);
    assert_eq!(data.train.dataset().len(), 4000);
    assert_eq!(data.train.dataset().class_counts(), vec![400; 10]);
    assert_eq!(data.test.len(), 1000);
    assert_eq!(data.test.class_counts(), vec![100; 10]);
    assert_eq!((data.train.len(), data.valid.len()), (3600, 400));
    assert_eq!(
        data.valid.class_counts(),
        vec![40; 10],
        "stratified by default"
    );
    assert_eq!(bundled::CLASS_NAMES[9], "Ankle boot");
    // Fashion-MNIST pixels overall average about 0.286 (std about 0.353).
    assert!(
        (data.normalization.mean[0] - 0.286).abs() < 0.02,
        "{:?}",
        data.normalization
    );
    assert!(
        (data.normalization.std[0] - 0.353).abs() < 0.02,
        "{:?}",
        data.normalization
    );
}

// ---------------------------------------------------------------------------------------------
// Real data, when the shared folder is there (CI: ../shared relative to the repository root)

fn shared(sub: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(sub);
    if p.is_dir() {
        Some(p)
    } else {
        println!("skipping: {} not present", p.display());
        None
    }
}

#[test]
fn real_cifar10_if_present() {
    let Some(dir) = shared("cifar10") else { return };
    let data = DataConfig {
        kind: DatasetKind::Cifar10,
        path: Some(dir),
        ..DataConfig::default()
    }
    .load()
    .unwrap();
    let train = data.train.dataset();
    let batches = train.sources().len();
    assert!((1..=5).contains(&batches));
    assert_eq!(train.len(), 10_000 * batches);
    assert_eq!(data.test.len(), 10_000);
    assert!(train.labels().iter().all(|&l| l < 10));
    assert!(data.test.dataset().labels().iter().all(|&l| l < 10));
    assert_eq!(data.valid.len(), 1_000 * batches);
    // The well-known CIFAR-10 channel means, roughly (0.491, 0.482, 0.447).
    for (m, want) in data.normalization.mean.iter().zip([0.491, 0.482, 0.447]) {
        assert!((m - want).abs() < 0.02, "{:?}", data.normalization);
    }
    println!("{}", data.describe());
}

#[test]
fn real_fashion_mnist_if_present_and_bundled_subset_matches_it() {
    let Some(dir) = shared("fashion-mnist") else {
        return;
    };
    let tt = DatasetKind::FashionMnist.read(Some(&dir)).unwrap();
    assert_eq!((tt.train.len(), tt.test.len()), (60_000, 10_000));
    assert_eq!(tt.train.class_counts(), vec![6_000; 10]);
    assert!(tt.test.labels().iter().all(|&l| l < 10));
    // The bundled set is the first 400 (train) / 100 (test) of each class, in file order.
    let b = bundled::read().unwrap();
    for (full, sub, per_class) in [(&tt.train, &b.train, 400), (&tt.test, &b.test, 100)] {
        let mut taken = [0usize; 10];
        let mut k = 0;
        for i in 0..full.len() {
            let c = usize::from(full.label(i));
            if taken[c] < per_class {
                taken[c] += 1;
                assert_eq!(sub.label(k), full.label(i));
                assert_eq!(sub.image(k), full.image(i), "bundled record {k}");
                k += 1;
            }
        }
        assert_eq!(k, sub.len());
    }
}
