//! The quantizers as CubeCL kernels for the GPU backends (wgpu, Vulkan, CUDA).
//!
//! One elementwise pass per quantizer instead of the 10-20 tensor ops of the CPU path in
//! `quant`, each of which is a kernel launch and a full read and write of the tensor on a GPU.
//! They compute the same numbers as the tensor ops (tests/kernels.rs checks it on any wgpu
//! adapter, lavapipe included):
//! - powers of two come from the float's exponent bits, not from `log2`/`exp2`, whose GPU
//!   precision is not specified exactly enough (Vulkan allows several ulps);
//! - deterministic rounding is round-half-to-even written out, because SPIR-V's `Round` may round
//!   halves either way;
//! - stochastic rounding compares the caller's uniform draws with the fractional part, exactly as
//!   the tensor path does. Only DeepShift-Q's stochastic mode takes a transcendental (`ln` of the
//!   mantissa for the fractional part of log2|w|): there the two paths can differ when a draw lies
//!   within about 1e-7 of that fraction.
//!
//! Values whose exponent field is zero (zero and subnormals below 2^-126) count as the smallest
//! shift; GPUs flush them anyway. NaN stays NaN, so a diverged trial is still seen as one.
//!
//! The kernels reach burn through its backend-extension API: `QuantKernels` is implemented for
//! `CubeBackend`, and the `#[backend_extension]` macro routes `Dispatch` tensors to it (through
//! burn's fusion layer, which runs custom operations as opaque steps).

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::{self, calculate_cube_count_elemwise};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

/// sqrt(2) rounded to f32 (just below it): round(log2 m) = 1 exactly when m > this, for m in [1, 2).
const SQRT_2: f32 = std::f32::consts::SQRT_2;
const LN_2: f32 = std::f32::consts::LN_2;

#[backend_extension(Cube, Fusion)]
pub trait QuantKernels: Backend {
    /// DeepShift-Q: `sign(w) * 2^p`, p = round(log2|w|) clamped to [lo, hi]; `noise` (uniform
    /// draws, same shape) is read only when `stochastic`.
    #[fusion(dtype = w, shape = w)]
    fn shift_q(
        w: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        lo: i32,
        hi: i32,
        stochastic: bool,
    ) -> FloatTensor<Self>;

    /// DeepShift-PS: `sign(round(sign)) * 2^round(clamp(shift, lo, hi))`.
    #[fusion(dtype = shift, shape = shift)]
    fn shift_ps(
        shift: FloatTensor<Self>,
        sign: FloatTensor<Self>,
        noise_shift: FloatTensor<Self>,
        noise_sign: FloatTensor<Self>,
        lo: i32,
        hi: i32,
        stochastic: bool,
    ) -> FloatTensor<Self>;

    /// Fixed point: `clamp(floor(x * scale) * inv_scale, min, max)`.
    #[fusion(dtype = x, shape = x)]
    fn fixed_point(
        x: FloatTensor<Self>,
        scale: f32,
        inv_scale: f32,
        min: f32,
        max: f32,
    ) -> FloatTensor<Self>;
}

/// True when the kernels can take this tensor: f32 on a CubeCL device.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && matches!(x.device().inner().as_dispatch(), DispatchDevice::Cube(_))
}

/// Runs `op` on the tensors without their autodiff association and gives the result back as an
/// untracked constant on the original device: the straight-through gradients are added around
/// it with tensor ops, as on the CPU.
fn run<const D: usize, const N: usize>(
    inputs: [Tensor<D>; N],
    op: impl FnOnce([burn::backend::DispatchTensor; N]) -> burn::backend::DispatchTensor,
) -> Tensor<D> {
    let autodiff = inputs[0].is_autodiff();
    let out = Tensor::<D>::from_dispatch(op(inputs.map(|t| t.inner().into_dispatch())));
    if autodiff { out.autodiff() } else { out }
}

pub fn shift_q<const D: usize>(
    w: Tensor<D>,
    noise: Option<Tensor<D>>,
    lo: i32,
    hi: i32,
) -> Tensor<D> {
    let stochastic = noise.is_some();
    let noise = noise.unwrap_or_else(|| w.clone());
    run([w, noise], |[w, noise]| {
        <Dispatch as QuantKernels>::shift_q(w, noise, lo, hi, stochastic)
    })
}

pub fn shift_ps<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    noise: Option<(Tensor<D>, Tensor<D>)>,
    lo: i32,
    hi: i32,
) -> Tensor<D> {
    let stochastic = noise.is_some();
    let (noise_shift, noise_sign) = noise.unwrap_or_else(|| (shift.clone(), sign.clone()));
    run([shift, sign, noise_shift, noise_sign], |[p, s, np, ns]| {
        <Dispatch as QuantKernels>::shift_ps(p, s, np, ns, lo, hi, stochastic)
    })
}

pub fn fixed_point<const D: usize>(x: Tensor<D>, int_bits: u32, frac_bits: u32) -> Tensor<D> {
    let (scale, min, max) = super::fixed_point_constants(int_bits, frac_bits);
    run([x], |[x]| {
        <Dispatch as QuantKernels>::fixed_point(
            x,
            scale as f32,
            (1.0 / scale) as f32,
            min as f32,
            max as f32,
        )
    })
}

impl QuantKernels for CubeBackend {
    fn shift_q(w: CubeTensor, noise: CubeTensor, lo: i32, hi: i32, stochastic: bool) -> CubeTensor {
        let (w, noise) = (into_contiguous(w), into_contiguous(noise));
        let (out, count, dim) = output_like(&w);
        let client = w.client.clone();
        // SAFETY: every buffer holds `out`'s element count of f32 (same shape, contiguous) and
        // the kernel stops at the end of `out`.
        unsafe {
            shift_q_kernel::launch_unchecked(
                &client,
                count,
                dim,
                w.into_buffer_arg(),
                noise.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                lo,
                hi,
                stochastic,
            )
        };
        out
    }

    fn shift_ps(
        shift: CubeTensor,
        sign: CubeTensor,
        noise_shift: CubeTensor,
        noise_sign: CubeTensor,
        lo: i32,
        hi: i32,
        stochastic: bool,
    ) -> CubeTensor {
        let [shift, sign, noise_shift, noise_sign] =
            [shift, sign, noise_shift, noise_sign].map(into_contiguous);
        let (out, count, dim) = output_like(&shift);
        let client = shift.client.clone();
        // SAFETY: as in `shift_q`.
        unsafe {
            shift_ps_kernel::launch_unchecked(
                &client,
                count,
                dim,
                shift.into_buffer_arg(),
                sign.into_buffer_arg(),
                noise_shift.into_buffer_arg(),
                noise_sign.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                lo as f32,
                hi as f32,
                stochastic,
            )
        };
        out
    }

    fn fixed_point(x: CubeTensor, scale: f32, inv_scale: f32, min: f32, max: f32) -> CubeTensor {
        let x = into_contiguous(x);
        let (out, count, dim) = output_like(&x);
        let client = x.client.clone();
        // SAFETY: as in `shift_q`.
        unsafe {
            fixed_point_kernel::launch_unchecked(
                &client,
                count,
                dim,
                x.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                scale,
                inv_scale,
                min,
                max,
            )
        };
        out
    }
}

/// An empty contiguous f32 tensor shaped like `x`, and a launch grid of one unit per element.
fn output_like(x: &CubeTensor) -> (CubeTensor, CubeCount, CubeDim) {
    let shape = x.meta.shape().clone();
    let n = shape.num_elements();
    let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, DType::F32);
    let dim = CubeDim::new(&x.client, n);
    let count = calculate_cube_count_elemwise(&x.client, n, dim);
    (out, count, dim)
}

#[cube]
fn is_nan(x: f32) -> bool {
    (u32::reinterpret(x) & 0x7fff_ffffu32) > 0x7f80_0000u32
}

/// 2^p for an integer p in [-149, 127], built from bits (exact, unlike `exp2` on a GPU).
#[cube]
fn pow2(p: i32) -> f32 {
    let bits = if p >= -126 {
        u32::cast_from(p + 127) << 23u32
    } else {
        1u32 << u32::cast_from(p + 149)
    };
    f32::reinterpret(bits)
}

/// Round half to even, exactly.
#[cube]
fn round_even(x: f32) -> f32 {
    let f = f32::floor(x);
    let d = x - f;
    let mut r = f;
    if d > 0.5 {
        r = f + 1.0;
    } else if d == 0.5 {
        // f is an integer: it is even when f / 2 has no fractional part.
        let half = f * 0.5;
        if half != f32::floor(half) {
            r = f + 1.0;
        }
    }
    r
}

/// floor(x) + 1 when the draw u is below frac(x): round up with probability frac(x).
#[cube]
fn round_stochastic(x: f32, u: f32) -> f32 {
    let f = f32::floor(x);
    let mut r = f;
    if u < x - f {
        r = f + 1.0;
    }
    r
}

#[cube]
fn clamp_f32(x: f32, lo: f32, hi: f32) -> f32 {
    let mut r = x;
    if x < lo {
        r = lo;
    }
    if x > hi {
        r = hi;
    }
    r
}

#[cube(launch_unchecked)]
fn shift_q_kernel(
    w: &[f32],
    noise: &[f32],
    out: &mut [f32],
    lo: i32,
    hi: i32,
    #[comptime] stochastic: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let x = w[i];
    if is_nan(x) {
        out[i] = x;
    } else {
        let bits = u32::reinterpret(x);
        let biased = (bits >> 23u32) & 0xffu32;
        let mut p = lo;
        if biased != 0u32 {
            // |x| = m * 2^e with m in [1, 2): round(log2|x|) = e + round(log2 m).
            let e = i32::cast_from(biased) - 127;
            let m = f32::reinterpret((bits & 0x007f_ffffu32) | 0x3f80_0000u32);
            let up = if stochastic {
                noise[i] < f32::ln(m) / LN_2
            } else {
                m > SQRT_2
            };
            p = e;
            if up {
                p = e + 1;
            }
        }
        if p < lo {
            p = lo;
        }
        if p > hi {
            p = hi;
        }
        let mut sign = 1.0f32;
        if x < 0.0 {
            sign = -1.0f32;
        }
        out[i] = sign * pow2(p);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn shift_ps_kernel(
    shift: &[f32],
    sign: &[f32],
    noise_shift: &[f32],
    noise_sign: &[f32],
    out: &mut [f32],
    lo: f32,
    hi: f32,
    #[comptime] stochastic: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let p_raw = shift[i];
    let s_raw = sign[i];
    if is_nan(p_raw) || is_nan(s_raw) {
        out[i] = p_raw + s_raw;
    } else {
        let clamped = clamp_f32(p_raw, lo, hi);
        let (p, s) = if stochastic {
            (
                round_stochastic(clamped, noise_shift[i]),
                round_stochastic(s_raw, noise_sign[i]),
            )
        } else {
            (round_even(clamped), round_even(s_raw))
        };
        let mut sgn = 0.0f32;
        if s > 0.0 {
            sgn = 1.0f32;
        }
        if s < 0.0 {
            sgn = -1.0f32;
        }
        out[i] = sgn * pow2(i32::cast_from(p));
    }
}

#[cube(launch_unchecked)]
fn fixed_point_kernel(x: &[f32], out: &mut [f32], scale: f32, inv_scale: f32, min: f32, max: f32) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    // NaN passes through the comparisons in clamp_f32 untouched.
    out[i] = clamp_f32(f32::floor(x[i] * scale) * inv_scale, min, max);
}
