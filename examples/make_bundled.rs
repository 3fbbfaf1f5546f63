//! Regenerates the bundled Fashion-MNIST subset in `src/data/bundled/`.
//!
//! ```text
//! cargo run --no-default-features --example make_bundled -- ../shared/data/fashion-mnist
//! ```
//!
//! Takes, in file order, the first `TRAIN_PER_CLASS` images of each class from the training
//! files and the first `TEST_PER_CLASS` of each class from the test files, keeps them in their
//! original relative order, and writes them as gzipped IDX (best compression, zero timestamp),
//! so the output is byte-for-byte reproducible.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dsnn_hpo::data::Dataset;
use dsnn_hpo::data::bundled::{FILES, NUM_CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS};
use dsnn_hpo::data::idx::{encode_images, encode_labels, gzip, read_split};

/// Indices of the first `per_class` records of each class, in file order.
fn select(data: &Dataset, per_class: usize) -> Result<Vec<usize>, String> {
    let mut taken = vec![0usize; NUM_CLASSES];
    let mut keep = Vec::with_capacity(per_class * NUM_CLASSES);
    for (i, &l) in data.labels().iter().enumerate() {
        let c = usize::from(l);
        if taken[c] < per_class {
            taken[c] += 1;
            keep.push(i);
        }
    }
    if taken.iter().any(|&t| t < per_class) {
        return Err(format!(
            "some class has fewer than {per_class} images: {taken:?}"
        ));
    }
    Ok(keep)
}

fn write(
    out_dir: &Path,
    data: &Dataset,
    keep: &[usize],
    images: &str,
    labels: &str,
) -> Result<(), String> {
    let mut pixels = Vec::with_capacity(keep.len() * data.image_len());
    let mut labs = Vec::with_capacity(keep.len());
    for &i in keep {
        pixels.extend_from_slice(data.image(i));
        labs.push(data.label(i) as u8);
    }
    for (name, bytes) in [
        (images, encode_images(data.height(), data.width(), &pixels)),
        (labels, encode_labels(&labs)),
    ] {
        let path = out_dir.join(name);
        let gz = gzip(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::write(&path, &gz).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {} ({} bytes)", path.display(), gz.len());
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let src = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: make_bundled <fashion-mnist folder> [output folder]")?;
    let out_dir = std::env::args_os()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src/data/bundled"));
    let train = read_split(&src, "train", NUM_CLASSES).map_err(|e| e.to_string())?;
    let test = read_split(&src, "t10k", NUM_CLASSES).map_err(|e| e.to_string())?;
    write(
        &out_dir,
        &train,
        &select(&train, TRAIN_PER_CLASS)?,
        FILES[0],
        FILES[1],
    )?;
    write(
        &out_dir,
        &test,
        &select(&test, TEST_PER_CLASS)?,
        FILES[2],
        FILES[3],
    )?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make_bundled: {e}");
            ExitCode::FAILURE
        }
    }
}
