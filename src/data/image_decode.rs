//! Decoding JPEG/PNG files into fixed-size RGB planes, in parallel.
//!
//! Every image becomes 3 x H x W bytes whatever it was on disk: grey (and grey + alpha) is
//! copied into the three channels, CMYK JPEGs are converted to RGB by the JPEG decoder (stored
//! values read as Adobe's inverted inks: R = C * K / 255, likewise G and B; no profile), 16-bit
//! PNGs are scaled to 8 bits, and alpha is dropped (not blended onto a background). The file
//! format is guessed from the content, so a PNG named `.jpg` still reads. A JPEG cut short is
//! an error (the decoder alone would fill the missing part with grey).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{DataError, read_bytes};

/// The size every image is resized to: `224` (square) or `[height, width]` in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    Square(u32),
    HeightWidth([u32; 2]),
}

impl ImageSize {
    /// Largest side accepted: 4096 x 4096 x 3 bytes is already 48 MiB per image.
    pub const MAX_SIDE: u32 = 4096;

    /// (height, width) in pixels.
    pub fn height_width(self) -> (u32, u32) {
        match self {
            ImageSize::Square(s) => (s, s),
            ImageSize::HeightWidth([h, w]) => (h, w),
        }
    }

    /// Checks both sides are in `1..=MAX_SIDE`; the message names the value.
    pub fn check(self) -> Result<(), DataError> {
        let (h, w) = self.height_width();
        if h == 0 || w == 0 || h > Self::MAX_SIDE || w > Self::MAX_SIDE {
            return Err(DataError::config(
                "image_size",
                format!(
                    "height {h} x width {w}: both sides must be in 1..={}",
                    Self::MAX_SIDE
                ),
            ));
        }
        Ok(())
    }
}

/// How an image of another shape is brought to the configured size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Scale each axis to the target, aspect not kept (torchvision `Resize((h, w))`, as the
    /// paper's Caltech101 runs do).
    #[default]
    Stretch,
    /// Scale so the image covers the target, keeping the aspect, then cut the centre
    /// (torchvision `Resize` of the shorter side followed by `CenterCrop`).
    CenterCrop,
}

impl ResizeMode {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            ResizeMode::Stretch => "stretch",
            ResizeMode::CenterCrop => "center-crop",
        }
    }
}

/// Target shape and resize rule of a decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeOptions {
    pub height: u32,
    pub width: u32,
    pub resize: ResizeMode,
}

impl DecodeOptions {
    /// Bytes of one decoded image (3 x H x W).
    pub fn image_len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }
}

/// Decodes one file into `out` (3 x H x W, channel-major). Errors name the file.
pub fn decode_into(path: &Path, opts: &DecodeOptions, out: &mut [u8]) -> Result<(), DataError> {
    let bad = |message: String| DataError::BadImage {
        path: path.to_path_buf(),
        message,
    };
    let bytes = read_bytes(path)?;
    let reader = ImageReader::new(Cursor::new(bytes.as_slice()))
        .with_guessed_format()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    match reader.format() {
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(&bytes) => {
            return Err(bad(
                "JPEG cut short: no end-of-image marker after the last scan".into(),
            ));
        }
        Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
        _ => return Err(bad("not a JPEG or PNG file (unrecognised content)".into())),
    }
    let decoded = reader.decode().map_err(|e| bad(e.to_string()))?;
    let rgb = fit(decoded.to_rgb8(), opts);
    planar(&rgb, out);
    Ok(())
}

/// The JPEG decoder fills a file cut inside its pixel data with grey instead of failing, so
/// truncation is checked here: the end-of-image marker (FF D9) must follow the last
/// start-of-scan (FF DA). Inside scan data a 0xFF byte is always followed by 00 or a restart
/// marker, so neither pair can appear there by accident; an EXIF thumbnail's markers come
/// before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Resizes to the target with a triangle (bilinear) filter that widens when shrinking, so
/// downscaling averages like torchvision's antialiased resize.
fn fit(rgb: RgbImage, opts: &DecodeOptions) -> RgbImage {
    let (w, h) = (opts.width, opts.height);
    if rgb.width() == w && rgb.height() == h {
        return rgb;
    }
    match opts.resize {
        ResizeMode::Stretch => image::imageops::resize(&rgb, w, h, FilterType::Triangle),
        ResizeMode::CenterCrop => {
            let scale = f64::max(
                f64::from(w) / f64::from(rgb.width()),
                f64::from(h) / f64::from(rgb.height()),
            );
            let sw = ((f64::from(rgb.width()) * scale).round() as u32).max(w);
            let sh = ((f64::from(rgb.height()) * scale).round() as u32).max(h);
            let scaled = image::imageops::resize(&rgb, sw, sh, FilterType::Triangle);
            let (x, y) = ((sw - w) / 2, (sh - h) / 2);
            image::imageops::crop_imm(&scaled, x, y, w, h).to_image()
        }
    }
}

/// Interleaved RGB rows to three planes.
fn planar(rgb: &RgbImage, out: &mut [u8]) {
    let plane = rgb.width() as usize * rgb.height() as usize;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
}

/// Decodes `files` in parallel into one N x 3 x H x W buffer, in the given order. On failure
/// the error of the first bad file in that order is returned, so the message does not depend
/// on thread timing.
pub fn decode_all(files: &[PathBuf], opts: &DecodeOptions) -> Result<Vec<u8>, DataError> {
    let len = opts.image_len();
    let mut pixels = vec![0u8; files.len() * len];
    let results: Vec<Result<(), DataError>> = pixels
        .par_chunks_mut(len)
        .zip(files.par_iter())
        .map(|(out, path)| decode_into(path, opts, out))
        .collect();
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(pixels)
}
