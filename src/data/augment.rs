//! CIFAR-style augmentation: random crop from the image zero-padded by 4 pixels, then
//! horizontal flip with probability 0.5 (torchvision's `RandomCrop(32, padding=4)` +
//! `RandomHorizontalFlip()`), fused with normalization so each output value is written once.

use rand::Rng;

/// Zero padding on each side before cropping.
pub const PAD: usize = 4;

/// One image's augmentation: the crop window's top-left corner in the padded image
/// (`0..=2*PAD`; `PAD` means no shift) and whether to mirror left-right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Augment {
    pub top: u8,
    pub left: u8,
    pub flip: bool,
}

impl Augment {
    /// Leaves the image as it is.
    pub const IDENTITY: Augment = Augment {
        top: PAD as u8,
        left: PAD as u8,
        flip: false,
    };

    /// Draws crop offsets uniformly from `0..=2*PAD` and a fair coin for the flip.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Augment {
            top: rng.random_range(0..=2 * PAD as u8),
            left: rng.random_range(0..=2 * PAD as u8),
            flip: rng.random_bool(0.5),
        }
    }
}

/// Writes the normalized image `src` (C x H x W bytes, `dims` = [C, H, W]) into `dst`
/// (C x H x W floats) without augmentation. `lut` is `Normalization::lookup_table()`.
pub fn write_plain(src: &[u8], dims: [usize; 3], lut: &[f32], dst: &mut [f32]) {
    let plane = dims[1] * dims[2];
    for ((src_c, dst_c), lut_c) in src
        .chunks_exact(plane)
        .zip(dst.chunks_exact_mut(plane))
        .zip(lut.chunks_exact(256))
    {
        for (d, &s) in dst_c.iter_mut().zip(src_c) {
            *d = lut_c[usize::from(s)];
        }
    }
}

/// Writes `src` cropped/flipped by `aug` and normalized through `lut` into `dst`.
///
/// Output pixel (y, x) of the crop is input (y + top - PAD, x + left - PAD), or padding (byte 0,
/// normalized like a black pixel, as torchvision pads before normalizing) outside the image;
/// with `flip`, output column x takes the crop's column W-1-x.
pub fn write_augmented(src: &[u8], dims: [usize; 3], aug: Augment, lut: &[f32], dst: &mut [f32]) {
    if aug == Augment::IDENTITY {
        return write_plain(src, dims, lut, dst);
    }
    let [_, h, w] = dims;
    let plane = h * w;
    let dy = isize::from(aug.top) - PAD as isize;
    let dx = isize::from(aug.left) - PAD as isize;
    // Columns x of the unflipped crop with a source column x + dx inside the image.
    let x0 = (-dx).clamp(0, w as isize) as usize;
    let x1 = (w as isize - dx).clamp(x0 as isize, w as isize) as usize;
    // The flipped output holds those same source columns at w - x1 .. w - x0, reversed.
    let (o0, o1) = if aug.flip { (w - x1, w - x0) } else { (x0, x1) };
    let s0 = (x0 as isize + dx).max(0) as usize;
    for ((src_c, dst_c), lut_c) in src
        .chunks_exact(plane)
        .zip(dst.chunks_exact_mut(plane))
        .zip(lut.chunks_exact(256))
    {
        let pad = lut_c[0];
        for (y, dst_row) in dst_c.chunks_exact_mut(w).enumerate() {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize || x0 == x1 {
                dst_row.fill(pad);
                continue;
            }
            let row_start = sy as usize * w;
            let src_seg = &src_c[row_start + s0..row_start + s0 + (x1 - x0)];
            dst_row[..o0].fill(pad);
            dst_row[o1..].fill(pad);
            let out = &mut dst_row[o0..o1];
            if aug.flip {
                for (d, &s) in out.iter_mut().zip(src_seg.iter().rev()) {
                    *d = lut_c[usize::from(s)];
                }
            } else {
                for (d, &s) in out.iter_mut().zip(src_seg) {
                    *d = lut_c[usize::from(s)];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slow, obviously-correct reference: pad, crop, flip, one pixel at a time.
    fn reference(src: &[u8], [c, h, w]: [usize; 3], aug: Augment) -> Vec<f32> {
        let mut out = Vec::new();
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let cx = if aug.flip { w - 1 - x } else { x };
                    let sy = y as isize + aug.top as isize - PAD as isize;
                    let sx = cx as isize + aug.left as isize - PAD as isize;
                    let v = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        src[ch * h * w + sy as usize * w + sx as usize]
                    } else {
                        0
                    };
                    out.push(v as f32 + 1000.0 * ch as f32);
                }
            }
        }
        out
    }

    #[test]
    fn matches_reference_for_every_offset_and_flip() {
        let dims = [2, 5, 7];
        let src: Vec<u8> = (0..70).map(|i| (i + 1) as u8).collect();
        // Table: value v in channel c maps to v + 1000 c, so padding (v = 0) shows as 1000 c.
        let lut: Vec<f32> = (0..2)
            .flat_map(|c| (0..256).map(move |v| v as f32 + 1000.0 * c as f32))
            .collect();
        for top in 0..=8 {
            for left in 0..=8 {
                for flip in [false, true] {
                    let aug = Augment { top, left, flip };
                    let mut dst = vec![f32::NAN; 70];
                    write_augmented(&src, dims, aug, &lut, &mut dst);
                    assert_eq!(dst, reference(&src, dims, aug), "{aug:?}");
                }
            }
        }
    }
}
