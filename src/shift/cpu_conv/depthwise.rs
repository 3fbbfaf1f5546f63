//! Direct kernels for convolutions whose groups each read one input channel (depthwise, any
//! channel multiplier), as MobileNetV2 and EfficientNet use them.
//!
//! The gemm formulation degenerates there: one group's product is `[cog × k·k] · [k·k × n]`
//! with `cog` usually 1, a matrix-vector product per channel that pays the unfolding (k·k
//! copies of the plane) and gemm's packing for k·k multiply-adds per output. Here each kernel
//! tap is one shifted row axpy (forward, input gradient) or one shifted row dot product (weight
//! gradient) on planes that stay in cache, with no unfolding buffer at all.

use rayon::prelude::*;

use crate::par_buffer::par_filled;

use super::{Geometry, IMAGES_PER_CHUNK, QUANTIZED, sum_in_order, valid_range};
use crate::shift::cpu_quant::{fixed_point_in_place, vectorized};

/// True when every group reads exactly one input channel.
pub(super) fn applies(geo: &Geometry) -> bool {
    geo.cig == 1
}

/// Runs `f` on input plane `g` of one image, quantized to the layer's fixed-point grid first
/// when it has one (in this thread's buffer, as the unfolding does).
fn with_plane<R>(geo: &Geometry, x_img: &[f32], g: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    let hw = geo.h * geo.w;
    let plane = &x_img[g * hw..][..hw];
    match geo.grid {
        None => f(plane),
        Some(grid) => QUANTIZED.with(|cell| {
            let mut q = cell.borrow_mut();
            q.clear();
            q.extend_from_slice(plane);
            fixed_point_in_place(&mut q, grid);
            f(&q)
        }),
    }
}

/// Calls `tap(i, j, oy, x_lo, x_hi, input_row, first_input_column)` for every kernel tap and
/// every output row that reads a real (non-padding) input row; the output columns `x_lo..x_hi`
/// read input columns `first + (ox - x_lo) * stride`.
fn for_each_tap(
    geo: &Geometry,
    mut tap: impl FnMut(usize, usize, usize, usize, usize, usize, usize),
) {
    let ([sh, sw], [ph, pw]) = (geo.stride, geo.pad);
    for i in 0..geo.kh {
        let (y_lo, y_hi) = valid_range(geo.oh, geo.h, sh, ph, i);
        for j in 0..geo.kw {
            let (x_lo, x_hi) = valid_range(geo.ow, geo.w, sw, pw, j);
            if x_lo == x_hi {
                continue;
            }
            for oy in y_lo..y_hi {
                tap(i, j, oy, x_lo, x_hi, oy * sh + i - ph, x_lo * sw + j - pw);
            }
        }
    }
}

/// `[batch, cout, oh, ow]` output.
pub(super) fn forward(geo: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (n, taps, sw) = (geo.n(), geo.kh * geo.kw, geo.stride[1]);
    par_filled(geo.y_image(), geo.batch, 1, |b, y_img| {
        let x_img = &x[b * geo.x_image()..][..geo.x_image()];
        vectorized(|| {
            for g in 0..geo.groups {
                with_plane(geo, x_img, g, |plane| {
                    for co in g * geo.cog..(g + 1) * geo.cog {
                        let y = &mut y_img[co * n..][..n];
                        y.fill(bias.map_or(0.0, |b| b[co]));
                        let wk = &w[co * taps..][..taps];
                        for_each_tap(geo, |i, j, oy, x_lo, x_hi, iy, ix| {
                            let wv = wk[i * geo.kw + j];
                            let dst = &mut y[oy * geo.ow..][x_lo..x_hi];
                            let src = &plane[iy * geo.w..][..geo.w];
                            if sw == 1 {
                                for (d, s) in dst.iter_mut().zip(&src[ix..]) {
                                    *d += wv * s;
                                }
                            } else {
                                for (d, s) in dst.iter_mut().zip(src[ix..].iter().step_by(sw)) {
                                    *d += wv * s;
                                }
                            }
                        });
                    }
                });
            }
        })
    })
}

/// `[batch, cin, h, w]` input gradient: each tap's output gradient rows added back, scaled by
/// the tap's weight, onto the input rows they read.
pub(super) fn grad_input(geo: &Geometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (n, taps, sw) = (geo.n(), geo.kh * geo.kw, geo.stride[1]);
    let hw = geo.h * geo.w;
    par_filled(geo.x_image(), geo.batch, 1, |b, dx_img| {
        let dy_img = &dy[b * geo.y_image()..][..geo.y_image()];
        vectorized(|| {
            for g in 0..geo.groups {
                let plane = &mut dx_img[g * hw..][..hw];
                for co in g * geo.cog..(g + 1) * geo.cog {
                    let d = &dy_img[co * n..][..n];
                    let wk = &w[co * taps..][..taps];
                    for_each_tap(geo, |i, j, oy, x_lo, x_hi, iy, ix| {
                        let wv = wk[i * geo.kw + j];
                        let src = &d[oy * geo.ow..][x_lo..x_hi];
                        let dst = &mut plane[iy * geo.w..][..geo.w];
                        if sw == 1 {
                            for (t, s) in dst[ix..].iter_mut().zip(src) {
                                *t += wv * s;
                            }
                        } else {
                            for (t, s) in dst[ix..].iter_mut().step_by(sw).zip(src) {
                                *t += wv * s;
                            }
                        }
                    });
                }
            }
        })
    })
}

/// `[cout, 1, kh, kw]` weight gradient: each tap the dot product of the output gradient with the
/// input rows it read, summed per chunk of images and then over chunks in order (as the gemm
/// path does), so the result does not depend on the thread count.
pub(super) fn grad_weight(geo: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (n, taps, sw) = (geo.n(), geo.kh * geo.kw, geo.stride[1]);
    let len = geo.cout * taps;
    let chunks = geo.batch.div_ceil(IMAGES_PER_CHUNK);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0.0f32; len];
            vectorized(|| {
                for b in c * IMAGES_PER_CHUNK..((c + 1) * IMAGES_PER_CHUNK).min(geo.batch) {
                    let x_img = &x[b * geo.x_image()..][..geo.x_image()];
                    let dy_img = &dy[b * geo.y_image()..][..geo.y_image()];
                    for g in 0..geo.groups {
                        with_plane(geo, x_img, g, |plane| {
                            for co in g * geo.cog..(g + 1) * geo.cog {
                                let d = &dy_img[co * n..][..n];
                                let a = &mut acc[co * taps..][..taps];
                                for_each_tap(geo, |i, j, oy, x_lo, x_hi, iy, ix| {
                                    let gy = &d[oy * geo.ow..][x_lo..x_hi];
                                    let src = &plane[iy * geo.w..][..geo.w];
                                    a[i * geo.kw + j] += if sw == 1 {
                                        dot(gy, &src[ix..])
                                    } else {
                                        gy.iter()
                                            .zip(src[ix..].iter().step_by(sw))
                                            .map(|(p, q)| p * q)
                                            .sum::<f32>()
                                    };
                                });
                            }
                        });
                    }
                }
            });
            acc
        })
        .collect();
    sum_in_order(partials, len)
}

/// A dot product over `a` (and as much of `b`) in eight lanes, so that it vectorizes: a plain
/// `sum` is a serial chain the compiler must not reorder.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let mut lanes = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| p * q)
        .sum();
    lanes.iter().sum::<f32>() + tail
}
