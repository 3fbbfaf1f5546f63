//! Image-folder datasets (image-folder, caltech101, tiny-imagenet) on small folders of images
//! the tests write themselves: classes and labels, sizes and colour conversions, the seeded
//! stratified test split, the decode cache, and every kind of bad input.

use std::fs;
use std::path::{Path, PathBuf};

use dsnn_hpo::data::image_decode::DecodeOptions;
use dsnn_hpo::data::image_folder::{FolderOptions, list};
use dsnn_hpo::data::{
    DataConfig, DataError, DatasetKind, ImageSize, LoadedData, ResizeMode, Split,
};
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, LumaA, Rgb, RgbImage, Rgba};

// ---------------------------------------------------------------------------------------------
// Builders

/// Distinct, exactly representable colours per class, so a decoded pixel tells its label.
fn colour(class: usize) -> [u8; 3] {
    [
        (40 * class + 10) as u8,
        (200 - 30 * class) as u8,
        (17 * class) as u8,
    ]
}

fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
    ImageBuffer::from_pixel(w, h, Rgb(c))
}

/// Writes `img` as `path` (format from the extension), creating the folders.
fn save(img: &DynamicImage, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `counts[k]` PNGs of class `names[k]`'s colour (varying sizes) under `root/<name>/`.
fn class_folders(root: &Path, names: &[&str], counts: &[usize]) {
    for (k, (name, &n)) in names.iter().zip(counts).enumerate() {
        for i in 0..n {
            let img = solid(5 + i as u32 % 4, 7 + i as u32 % 3, colour(k));
            save(
                &DynamicImage::ImageRgb8(img),
                &root.join(name).join(format!("img_{i:03}.png")),
            );
        }
    }
}

fn cfg(kind: DatasetKind, path: &Path) -> DataConfig {
    DataConfig {
        kind,
        path: Some(path.to_path_buf()),
        image_size: Some(ImageSize::HeightWidth([6, 4])),
        ..DataConfig::default()
    }
}

fn options(seed: u64, exclude: Option<Vec<String>>) -> FolderOptions {
    FolderOptions {
        decode: DecodeOptions {
            height: 6,
            width: 4,
            resize: ResizeMode::Stretch,
        },
        test_fraction: 0.2,
        split_seed: seed,
        exclude,
        cache: None,
        limit_train: None,
    }
}

/// The class each image of `split` shows, read back from its colour (all images are solid).
fn check_colours(split: &Split, colours: &[[u8; 3]]) {
    let [_, h, w] = split.dataset().dims();
    let plane = h * w;
    for k in 0..split.len() {
        let img = split.image(k);
        let want = colours[usize::from(split.label(k))];
        for (ch, &v) in want.iter().enumerate() {
            assert!(
                img[ch * plane..(ch + 1) * plane].iter().all(|&p| p == v),
                "image {k} (label {}) channel {ch} is not {v}",
                split.label(k)
            );
        }
    }
}

fn all_colours(n: usize) -> Vec<[u8; 3]> {
    (0..n).map(colour).collect()
}

fn load_err(c: &DataConfig) -> DataError {
    match c.load() {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Classes, labels, sizes

#[test]
fn image_folder_numbers_sorted_class_folders_and_resizes() {
    let tmp = tempfile::tempdir().unwrap();
    // Created out of order; numbered by sorted name: apple 0, banana 1, cherry 2.
    class_folders(tmp.path(), &["cherry", "apple", "banana"], &[5, 10, 5]);
    fs::write(tmp.path().join("apple").join("notes.txt"), "not an image").unwrap();
    fs::create_dir_all(tmp.path().join(".thumbnails")).unwrap();
    let data = cfg(DatasetKind::ImageFolder, tmp.path()).load().unwrap();
    assert_eq!(data.num_classes(), 3);
    assert_eq!(data.dims(), [3, 6, 4]);
    assert_eq!(data.train.len() + data.valid.len() + data.test.len(), 20);
    assert_eq!(data.test.len(), 4);
    // cherry got colour(0) on disk but is class 2: colours by sorted position are
    // apple = colour(1), banana = colour(2), cherry = colour(0).
    let by_label = [colour(1), colour(2), colour(0)];
    for split in [&data.train, &data.valid, &data.test] {
        check_colours(split, &by_label);
    }
    assert!(
        !data.augment,
        "image folders train without augmentation by default"
    );
    let note = data.load_note.as_deref().unwrap();
    assert!(note.contains("decoded 20 images to 3x6x4"), "{note}");

    // limit_train keeps a shuffled sample of all classes, and only it is decoded.
    let limited = DataConfig {
        limit_train: Some(8),
        validation_fraction: 0.25,
        ..cfg(DatasetKind::ImageFolder, tmp.path())
    }
    .load()
    .unwrap();
    assert_eq!(limited.train.len() + limited.valid.len(), 8);
    let labels = limited.train.dataset().labels();
    assert!(labels.iter().any(|&l| l != labels[0]), "{labels:?}");
    let note = limited.load_note.as_deref().unwrap();
    assert!(note.contains("decoded 12 images"), "{note}");
}

#[test]
fn train_and_test_folders_are_used_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    class_folders(&tmp.path().join("train"), &["a", "b", "c"], &[4, 4, 4]);
    // The test folder lacks class b and adds nothing unknown.
    class_folders(&tmp.path().join("val"), &["a"], &[2]);
    save(
        &DynamicImage::ImageRgb8(solid(3, 3, colour(2))),
        &tmp.path().join("val/c/x.png"),
    );
    let data = cfg(DatasetKind::ImageFolder, tmp.path()).load().unwrap();
    assert_eq!(data.num_classes(), 3);
    assert_eq!(data.test.len(), 3);
    assert_eq!(data.test.class_counts(), vec![2, 0, 1]);
    check_colours(&data.test, &all_colours(3));

    // A test class the training folder does not have is an error naming its folder.
    class_folders(
        &tmp.path().join("val"),
        &["a", "b", "c", "zebra"],
        &[0, 0, 0, 1],
    );
    let msg = load_err(&cfg(DatasetKind::ImageFolder, tmp.path())).to_string();
    assert!(
        msg.contains("zebra") && msg.contains("no folder in"),
        "{msg}"
    );
}

#[test]
fn grey_alpha_and_16_bit_images_become_8_bit_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    let test = tmp.path().join("test");
    let grey = DynamicImage::ImageLuma8(GrayImage::from_pixel(4, 6, Luma([77])));
    let grey_alpha = DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(4, 6, LumaA([90, 0])));
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(4, 6, Rgba([10, 20, 30, 0])));
    let rgb16 = DynamicImage::ImageRgb16(ImageBuffer::from_pixel(4, 6, Rgb([65535, 257 * 128, 0])));
    let grey16 = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(4, 6, Luma([257 * 33])));
    let cases = [
        ("a_grey", grey, [77, 77, 77]),
        ("b_grey_alpha", grey_alpha, [90, 90, 90]),
        ("c_rgba", rgba, [10, 20, 30]),
        ("d_rgb16", rgb16, [255, 128, 0]),
        ("e_grey16", grey16, [33, 33, 33]),
    ];
    for (name, img, _) in &cases {
        save(img, &train.join(name).join("0.png"));
        save(img, &train.join(name).join("1.png"));
        save(img, &test.join(name).join("0.png"));
    }
    let data = DataConfig {
        validation_fraction: 0.5,
        ..cfg(DatasetKind::ImageFolder, tmp.path())
    }
    .load()
    .unwrap();
    let want: Vec<[u8; 3]> = cases.iter().map(|c| c.2).collect();
    for split in [&data.train, &data.valid, &data.test] {
        check_colours(split, &want);
    }
}

#[test]
fn a_grey_jpeg_decodes_to_three_equal_channels() {
    let tmp = tempfile::tempdir().unwrap();
    for class in ["x", "y"] {
        for i in 0..3 {
            let v = if class == "x" { 60 } else { 180 };
            let img = DynamicImage::ImageLuma8(GrayImage::from_pixel(16, 16, Luma([v])));
            save(&img, &tmp.path().join(class).join(format!("{i}.jpg")));
        }
    }
    let data = DataConfig {
        validation_fraction: 0.5,
        test_fraction: Some(0.34),
        ..cfg(DatasetKind::ImageFolder, tmp.path())
    }
    .load()
    .unwrap();
    for k in 0..data.train.len() {
        let img = data.train.image(k);
        let centre = 24 / 2;
        let v = [img[centre], img[24 + centre], img[48 + centre]];
        let want = if data.train.label(k) == 0 { 60 } else { 180 };
        assert_eq!(v[0], v[1]);
        assert_eq!(v[1], v[2]);
        assert!(v[0].abs_diff(want) <= 2, "{v:?} vs {want}");
    }
}

/// A baseline JPEG of one uniform CMYK colour, `side` x `side` (a multiple of 8), written by
/// hand since nothing in the dependency tree encodes CMYK: four components at 1x1 sampling,
/// quantization 1, DC-only blocks (a uniform block has no AC energy), an Adobe APP14 marker
/// with transform 0 (CMYK, stored as Adobe does: inverted, 255 = no ink).
fn cmyk_jpeg(side: u16, cmyk: [u8; 4]) -> Vec<u8> {
    /// MSB-first bits into bytes, a 0x00 stuffed after every 0xFF, the last byte padded with 1s.
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, len: u32) {
            for i in (0..len).rev() {
                self.acc = (self.acc << 1) | ((value >> i) & 1);
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.acc as u8);
                    if self.acc == 0xFF {
                        self.out.push(0);
                    }
                    (self.acc, self.n) = (0, 0);
                }
            }
        }
    }
    let segment = |out: &mut Vec<u8>, marker: u8, body: &[u8]| {
        out.extend([0xFF, marker]);
        out.extend(((body.len() + 2) as u16).to_be_bytes());
        out.extend(body);
    };
    let mut out = vec![0xFF, 0xD8];
    // APP14 "Adobe": version 100, flags 0 and 0, transform 0 = CMYK.
    segment(&mut out, 0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00");
    let mut dqt = vec![0u8];
    dqt.extend([1u8; 64]);
    segment(&mut out, 0xDB, &dqt);
    let mut sof = vec![8];
    sof.extend(side.to_be_bytes());
    sof.extend(side.to_be_bytes());
    sof.push(4);
    for id in 1..=4u8 {
        sof.extend([id, 0x11, 0]);
    }
    segment(&mut out, 0xC0, &sof);
    // DC table: categories 0..=11 with 4-bit codes, code = category (canonical order).
    let mut dc = vec![0x00];
    dc.extend([0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    dc.extend(0..12u8);
    segment(&mut out, 0xC4, &dc);
    // AC table: only end-of-block (0x00), code "0".
    let mut ac = vec![0x10, 1];
    ac.extend([0u8; 15]);
    ac.push(0x00);
    segment(&mut out, 0xC4, &ac);
    let mut sos = vec![4];
    for id in 1..=4u8 {
        sos.extend([id, 0x00]);
    }
    sos.extend([0, 63, 0]);
    segment(&mut out, 0xDA, &sos);
    let mut bits = Bits {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    let mut previous = [0i32; 4];
    let mcus = (usize::from(side) / 8).pow(2);
    for _ in 0..mcus {
        for (c, &v) in cmyk.iter().enumerate() {
            // The DC of a uniform level-shifted block under the JPEG DCT: 8 * (v - 128).
            let dc = 8 * (i32::from(v) - 128);
            let diff = dc - std::mem::replace(&mut previous[c], dc);
            let category = 32 - diff.unsigned_abs().leading_zeros();
            bits.put(category, 4);
            let extra = if diff < 0 { diff - 1 } else { diff };
            bits.put(extra as u32 & ((1 << category) - 1), category);
            bits.put(0, 1);
        }
    }
    if bits.n > 0 {
        let pad = 8 - bits.n;
        bits.put((1 << pad) - 1, pad);
    }
    out.extend(bits.out);
    out.extend([0xFF, 0xD9]);
    out
}

#[test]
fn a_cmyk_jpeg_is_converted_to_rgb_as_adobe_stores_it() {
    // Stored (inverted) CMYK -> RGB: R = C * K / 255, G = M * K / 255, B = Y * K / 255, rounded
    // (the JPEG decoder's conversion; with ink shares c, k: R = 255 (1 - c)(1 - k)).
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("a", [200u8, 100, 40, 230], [180u8, 90, 36]),
        ("b", [255, 255, 255, 255], [255, 255, 255]),
        ("c", [255, 0, 128, 128], [128, 0, 64]),
    ];
    for (class, cmyk, _) in &cases {
        let dir = tmp.path().join(class);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..3 {
            fs::write(dir.join(format!("{i}.jpg")), cmyk_jpeg(16, *cmyk)).unwrap();
        }
    }
    let decoded = image::load_from_memory(&cmyk_jpeg(16, [200, 100, 40, 230])).unwrap();
    assert_eq!(
        decoded.color(),
        image::ColorType::Rgb8,
        "the decoder converts"
    );
    let data = DataConfig {
        validation_fraction: 0.5,
        test_fraction: Some(0.34),
        ..cfg(DatasetKind::ImageFolder, tmp.path())
    }
    .load()
    .unwrap();
    for split in [&data.train, &data.valid, &data.test] {
        let [_, h, w] = split.dataset().dims();
        let plane = h * w;
        for k in 0..split.len() {
            let img = split.image(k);
            let want = cases[usize::from(split.label(k))].2;
            for (ch, &v) in want.iter().enumerate() {
                // The decoder's integer IDCT may round a level by one.
                assert!(
                    img[ch * plane..(ch + 1) * plane]
                        .iter()
                        .all(|&p| p.abs_diff(v) <= 1),
                    "label {} channel {ch}: {:?} vs {v}",
                    split.label(k),
                    &img[ch * plane..ch * plane + 4]
                );
            }
        }
    }
}

#[test]
fn center_crop_keeps_the_aspect_and_stretch_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 wide, 10 high: blue 5-column borders around a red 10x10 centre.
    let img = RgbImage::from_fn(20, 10, |x, _| {
        if (5..15).contains(&x) {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    for class in ["a", "b"] {
        for i in 0..3 {
            save(
                &DynamicImage::ImageRgb8(img.clone()),
                &tmp.path().join(class).join(format!("{i}.png")),
            );
        }
    }
    let load = |resize| {
        DataConfig {
            kind: DatasetKind::ImageFolder,
            path: Some(tmp.path().to_path_buf()),
            image_size: Some(ImageSize::Square(10)),
            resize: Some(resize),
            test_fraction: Some(0.34),
            validation_fraction: 0.5,
            ..DataConfig::default()
        }
        .load()
        .unwrap()
    };
    let cropped = load(ResizeMode::CenterCrop);
    let blue_plane = &cropped.test.image(0)[200..300];
    assert!(blue_plane.iter().all(|&b| b == 0), "{blue_plane:?}");
    let stretched = load(ResizeMode::Stretch);
    let blue_plane = &stretched.test.image(0)[200..300];
    assert!(blue_plane.iter().any(|&b| b > 200), "{blue_plane:?}");
}

// ---------------------------------------------------------------------------------------------
// Caltech101 layout and the test split

fn caltech(root: &Path) -> PathBuf {
    let cats = root.join("101_ObjectCategories");
    // 10, 5, 1 and 4 images; the background class is left out by default.
    class_folders(
        &cats,
        &[
            "accordion",
            "airplanes",
            "anchor",
            "ant",
            "BACKGROUND_Google",
        ],
        &[10, 5, 1, 4, 3],
    );
    cats
}

fn per_class(labels: &[u16], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &l in labels {
        counts[usize::from(l)] += 1;
    }
    counts
}

#[test]
fn caltech101_split_is_stratified_and_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let cats = caltech(tmp.path());
    let set = list(DatasetKind::Caltech101, tmp.path(), &options(3, None)).unwrap();
    assert_eq!(set.classes, ["accordion", "airplanes", "anchor", "ant"]);
    // 20 images, 4 to test: floors 2, 1, 0, 0 and the remaining one to the largest remainder
    // (ant, 0.8); the single anchor image stays in training.
    assert_eq!(per_class(&set.test.labels, 4), [2, 1, 0, 1]);
    assert_eq!(per_class(&set.train.labels, 4), [8, 4, 1, 3]);
    // Every file exactly once, in one part or the other.
    let mut all: Vec<&PathBuf> = set.train.files.iter().chain(&set.test.files).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20);
    // The path may also point at 101_ObjectCategories itself.
    let direct = list(DatasetKind::Caltech101, &cats, &options(3, None)).unwrap();
    assert_eq!(direct, set);

    let again = list(DatasetKind::Caltech101, tmp.path(), &options(3, None)).unwrap();
    assert_eq!(again, set);
    let differs = (4..12).any(|seed| {
        list(DatasetKind::Caltech101, tmp.path(), &options(seed, None))
            .unwrap()
            .test
            != set.test
    });
    assert!(differs, "the split seed changes which images are held out");

    let with_background = list(
        DatasetKind::Caltech101,
        tmp.path(),
        &options(3, Some(vec![])),
    )
    .unwrap();
    assert_eq!(with_background.classes.len(), 5);
    assert_eq!(with_background.classes[0], "BACKGROUND_Google");
}

#[test]
fn caltech101_loads_with_the_split_and_default_size() {
    let tmp = tempfile::tempdir().unwrap();
    caltech(tmp.path());
    let data = DataConfig {
        kind: DatasetKind::Caltech101,
        path: Some(tmp.path().to_path_buf()),
        validation_fraction: 0.2,
        ..DataConfig::default()
    }
    .load()
    .unwrap();
    assert_eq!(data.dims(), [3, 224, 224]);
    assert_eq!(data.num_classes(), 4);
    assert_eq!(data.test.class_counts(), vec![2, 1, 0, 1]);
    check_colours(&data.test, &all_colours(4));
    check_colours(&data.train, &all_colours(4));
}

// ---------------------------------------------------------------------------------------------
// Tiny ImageNet layout

fn tiny(root: &Path) -> PathBuf {
    let t = root.join("tiny-imagenet-200");
    fs::create_dir_all(&t).unwrap();
    // wnids.txt out of order: classes are numbered n01 = 0, n02 = 1.
    fs::write(t.join("wnids.txt"), "n02\nn01\n").unwrap();
    for (k, wnid) in ["n01", "n02"].iter().enumerate() {
        for i in 0..3 {
            save(
                &DynamicImage::ImageRgb8(solid(8, 8, colour(k))),
                &t.join("train")
                    .join(wnid)
                    .join("images")
                    .join(format!("{wnid}_{i}.JPEG")),
            );
        }
        fs::write(
            t.join("train").join(wnid).join(format!("{wnid}_boxes.txt")),
            "",
        )
        .unwrap();
    }
    for (i, k) in [1usize, 0, 1].iter().enumerate() {
        save(
            &DynamicImage::ImageRgb8(solid(8, 8, colour(*k))),
            &t.join("val/images").join(format!("val_{i}.png")),
        );
    }
    fs::write(
        t.join("val/val_annotations.txt"),
        "val_0.png\tn02\t0\t0\t8\t8\nval_1.png\tn01\t1\t1\t5\t5\nval_2.png\tn02\t0\t0\t1\t1\n",
    )
    .unwrap();
    t
}

#[test]
fn tiny_imagenet_reads_train_folders_and_annotated_val() {
    let tmp = tempfile::tempdir().unwrap();
    tiny(tmp.path());
    let data = DataConfig {
        kind: DatasetKind::TinyImagenet,
        path: Some(tmp.path().to_path_buf()),
        validation_fraction: 0.34,
        ..DataConfig::default()
    }
    .load()
    .unwrap();
    assert_eq!(data.dims(), [3, 64, 64]);
    assert_eq!(data.num_classes(), 2);
    assert_eq!(data.train.len() + data.valid.len(), 6);
    let test_labels: Vec<u16> = (0..data.test.len()).map(|k| data.test.label(k)).collect();
    assert_eq!(test_labels, [1, 0, 1]);
    // Train images are JPEG (lossy on solid colours by a step or two); val images PNG.
    check_colours(&data.test, &all_colours(2));
    for k in 0..data.train.len() {
        let want = colour(usize::from(data.train.label(k)));
        let img = data.train.image(k);
        for (ch, &v) in want.iter().enumerate() {
            assert!(img[ch * 4096].abs_diff(v) <= 3, "{} vs {v}", img[ch * 4096]);
        }
    }
}

#[test]
fn tiny_imagenet_missing_or_bad_label_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tiny(tmp.path());
    let c = cfg(DatasetKind::TinyImagenet, tmp.path());

    fs::write(
        t.join("val/val_annotations.txt"),
        "val_0.png\tn02\t0\t0\t8\t8\nval_1.png\tn99\t1\t1\t5\t5\n",
    )
    .unwrap();
    let msg = load_err(&c).to_string();
    assert!(
        msg.contains("val_annotations.txt") && msg.contains("line 2") && msg.contains("n99"),
        "{msg}"
    );

    fs::remove_file(t.join("val/val_annotations.txt")).unwrap();
    let err = load_err(&c);
    assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("val_annotations.txt"), "{err}");

    fs::remove_file(t.join("wnids.txt")).unwrap();
    let msg = load_err(&c).to_string();
    assert!(msg.contains("wnids.txt"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Decode cache

fn cache_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn pixels_and_labels(d: &LoadedData) -> (Vec<u8>, Vec<u16>, Vec<u8>, Vec<u16>) {
    let (tr, te) = (d.train.dataset(), d.test.dataset());
    (
        tr.images().to_vec(),
        tr.labels().to_vec(),
        te.images().to_vec(),
        te.labels().to_vec(),
    )
}

#[test]
fn cache_round_trip_staleness_and_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let cache = tmp.path().join("cache");
    class_folders(&data_dir, &["a", "b"], &[5, 5]);
    let c = DataConfig {
        cache: Some(cache.clone()),
        ..cfg(DatasetKind::ImageFolder, &data_dir)
    };

    let first = c.load().unwrap();
    let note = first.load_note.clone().unwrap();
    assert!(
        note.contains("decoded 10 images") && note.contains("none yet"),
        "{note}"
    );
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("image-folder-6x4-stretch-"),
        "{files:?}"
    );

    let second = c.load().unwrap();
    let note = second.load_note.clone().unwrap();
    assert!(note.contains("read 10 decoded images from cache"), "{note}");
    assert_eq!(pixels_and_labels(&second), pixels_and_labels(&first));

    // Replace one image with a different colour and size: the listing changed, so the cache
    // is stale, rebuilt, and the new pixels show up.
    let victim = data_dir.join("a").join("img_000.png");
    save(&DynamicImage::ImageRgb8(solid(9, 9, [1, 2, 3])), &victim);
    let third = c.load().unwrap();
    let note = third.load_note.clone().unwrap();
    assert!(note.contains("stale"), "{note}");
    assert_ne!(pixels_and_labels(&third), pixels_and_labels(&first));
    let third_again = c.load().unwrap();
    assert!(
        third_again
            .load_note
            .as_deref()
            .unwrap()
            .contains("from cache")
    );
    assert_eq!(pixels_and_labels(&third_again), pixels_and_labels(&third));

    // A different size is a different cache file; the first one stays usable.
    let bigger = DataConfig {
        image_size: Some(ImageSize::Square(5)),
        ..c.clone()
    };
    assert!(
        bigger
            .load()
            .unwrap()
            .load_note
            .unwrap()
            .contains("decoded")
    );
    assert_eq!(cache_files(&cache).len(), 2);

    // A truncated cache file (as a full disk could leave) is rebuilt, not trusted.
    let path = cache.join(&cache_files(&cache)[1]);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let note = c.load().unwrap().load_note.unwrap();
    assert!(note.contains("damaged"), "{note}");
    assert_eq!(fs::read(&path).unwrap(), bytes);
    // No temporary files are left behind.
    assert!(cache_files(&cache).iter().all(|n| !n.contains(".tmp")));
}

#[test]
fn cache_key_depends_on_the_test_split_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    class_folders(&data_dir, &["a", "b"], &[10, 10]);
    let c = DataConfig {
        cache: Some(tmp.path().join("cache")),
        ..cfg(DatasetKind::ImageFolder, &data_dir)
    };
    c.load().unwrap();
    let other_seed = DataConfig {
        split_seed: 99,
        ..c.clone()
    };
    let note = other_seed.load().unwrap().load_note.unwrap();
    assert!(note.contains("stale"), "{note}");
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn a_truncated_or_fake_image_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    class_folders(tmp.path(), &["a", "b"], &[3, 3]);
    let c = cfg(DatasetKind::ImageFolder, tmp.path());

    let fake = tmp.path().join("b").join("fake.jpg");
    fs::write(&fake, "this is text, not a JPEG").unwrap();
    let err = load_err(&c);
    assert!(matches!(err, DataError::BadImage { .. }), "{err}");
    assert!(err.to_string().contains("fake.jpg"), "{err}");
    fs::remove_file(&fake).unwrap();

    // A PNG cut short.
    let png = tmp.path().join("a").join("img_001.png");
    let bytes = fs::read(&png).unwrap();
    fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&c);
    assert!(matches!(err, DataError::BadImage { .. }), "{err}");
    assert!(err.to_string().contains("img_001.png"), "{err}");
    fs::write(&png, &bytes).unwrap();

    // A JPEG cut inside its headers.
    let jpg = tmp.path().join("a").join("cut.jpg");
    save(&DynamicImage::ImageRgb8(solid(32, 32, [9, 9, 9])), &jpg);
    let bytes = fs::read(&jpg).unwrap();
    fs::write(&jpg, &bytes[..40]).unwrap();
    let err = load_err(&c);
    assert!(err.to_string().contains("cut.jpg"), "{err}");

    // A JPEG cut inside its pixel data.
    let noisy = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 7 + y) as u8, (y * 5) as u8, 3]));
    save(&DynamicImage::ImageRgb8(noisy), &jpg);
    let bytes = fs::read(&jpg).unwrap();
    fs::write(&jpg, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = load_err(&c);
    assert!(err.to_string().contains("cut.jpg"), "{err}");
}

#[test]
fn empty_classes_and_folders_are_errors_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(DatasetKind::ImageFolder, tmp.path());
    let err = load_err(&c);
    assert!(matches!(err, DataError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("no class folders"), "{err}");

    class_folders(tmp.path(), &["a", "b"], &[3, 3]);
    fs::create_dir_all(tmp.path().join("empty_class")).unwrap();
    fs::write(tmp.path().join("empty_class").join("readme.txt"), "x").unwrap();
    let err = load_err(&c);
    assert!(matches!(err, DataError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("empty_class"), "{err}");

    let missing = tmp.path().join("nope");
    let err = load_err(&cfg(DatasetKind::Caltech101, &missing));
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn too_few_images_for_the_test_split_name_test_fraction() {
    let tmp = tempfile::tempdir().unwrap();
    class_folders(tmp.path(), &["only"], &[2]);
    let err = load_err(&cfg(DatasetKind::ImageFolder, tmp.path()));
    assert!(
        matches!(
            err,
            DataError::Config {
                field: "test_fraction",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn config_fields_are_checked_and_kept_to_image_kinds() {
    let field_of = |c: DataConfig| match c.validate() {
        Err(DataError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = cfg(DatasetKind::ImageFolder, tmp.path());
    for size in [ImageSize::Square(0), ImageSize::HeightWidth([8, 5000])] {
        let c = DataConfig {
            image_size: Some(size),
            ..base.clone()
        };
        assert_eq!(field_of(c), "image_size");
    }
    let c = DataConfig {
        test_fraction: Some(1.0),
        ..base.clone()
    };
    assert_eq!(field_of(c), "test_fraction");
    let c = DataConfig {
        kind: DatasetKind::Cifar10,
        image_size: None,
        cache: Some("/tmp/c".into()),
        ..base.clone()
    };
    assert_eq!(field_of(c), "cache");

    class_folders(tmp.path(), &["a", "b"], &[3, 3]);
    let c = DataConfig {
        exclude_classes: Some(vec!["c".into()]),
        ..base
    };
    assert!(matches!(
        load_err(&c),
        DataError::Config {
            field: "exclude_classes",
            ..
        }
    ));
}

#[test]
fn kinds_and_sizes_parse_from_toml() {
    let c: DataConfig = toml::from_str(
        "kind = \"caltech101\"\npath = \"/d\"\nimage_size = [32, 48]\nresize = \"center-crop\"\n\
         cache = \"/c\"\nexclude_classes = []",
    )
    .unwrap();
    assert_eq!(c.kind, DatasetKind::Caltech101);
    assert_eq!(c.image_size, Some(ImageSize::HeightWidth([32, 48])));
    assert_eq!(c.resize, Some(ResizeMode::CenterCrop));
    let c: DataConfig =
        toml::from_str("kind = \"tiny-imagenet\"\npath = \"/d\"\nimage_size = 64").unwrap();
    assert_eq!(c.image_size, Some(ImageSize::Square(64)));
    assert_eq!(
        "image-folder".parse::<DatasetKind>().unwrap(),
        DatasetKind::ImageFolder
    );
    let msg = "imagenet".parse::<DatasetKind>().unwrap_err().to_string();
    assert!(
        msg.contains("caltech101, tiny-imagenet, image-folder"),
        "{msg}"
    );
}

/// The config's `[train] model`: a typed field with burn, a raw table without.
fn model_of(run: &dsnn_hpo::config::RunConfig) -> String {
    #[cfg(feature = "dsnn")]
    let name = run.train.model.name().to_string();
    #[cfg(not(feature = "dsnn"))]
    let name = run
        .train
        .as_ref()
        .and_then(|t| t.get("model"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    name
}

#[test]
fn the_shipped_caltech101_config_loads_a_caltech_folder() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/caltech101-mobilenetv2.toml");
    let tmp = tempfile::tempdir().unwrap();
    caltech(tmp.path());
    let sets = [
        format!("data.path={}", tmp.path().display()),
        format!("data.cache={}", tmp.path().join("cache").display()),
        "data.image_size=8".to_string(),
    ];
    let run = dsnn_hpo::config::RunConfig::load(&file, &sets).unwrap();
    assert_eq!(run.data.kind, DatasetKind::Caltech101);
    assert_eq!(model_of(&run), "mobilenetv2");
    assert_eq!((run.fidelity.min_epochs, run.fidelity.max_epochs), (2, 20));
    let data = run.data.load().unwrap();
    assert_eq!(data.dims(), [3, 8, 8]);
    assert_eq!(data.num_classes(), 4);
    assert_eq!(data.test.len(), 4);
}

#[test]
fn the_shipped_tiny_imagenet_config_loads_a_tiny_imagenet_folder() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tinyimagenet-resnet20.toml");
    let tmp = tempfile::tempdir().unwrap();
    tiny(tmp.path());
    let sets = [
        format!("data.path={}", tmp.path().display()),
        format!("data.cache={}", tmp.path().join("cache").display()),
        // Six training images: a third of them for validation keeps one per class.
        "data.validation_fraction=0.34".to_string(),
    ];
    let run = dsnn_hpo::config::RunConfig::load(&file, &sets).unwrap();
    assert_eq!(run.data.kind, DatasetKind::TinyImagenet);
    assert_eq!(model_of(&run), "resnet20");
    assert_eq!((run.fidelity.min_epochs, run.fidelity.max_epochs), (4, 15));
    let data = run.data.load().unwrap();
    assert_eq!(data.dims(), [3, 64, 64]);
    assert_eq!((data.num_classes(), data.test.len()), (2, 3));
}
