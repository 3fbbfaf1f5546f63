//! The DeepShift quantizers as burn tensor ops (the path every backend runs), with the
//! straight-through gradients of the reference:
//! - Q: `Wq = sign(W) * 2^round(log2 clamp(|W|))`, dL/dW := dL/dWq.
//! - PS: `w = sign(round(S)) * 2^round(clamp(P))`, dL/dP = g * s * 2^p * ln 2, dL/dS = g.
//! - activations: `clamp(floor(x * 2^F) * 2^-F, -2^(I-1), 2^(I-1) - 1)`, straight-through.
//!
//! On the GPU backends the forward values come from the CubeCL kernels in `kernel` instead
//! (same numbers, one pass); the gradient terms stay tensor ops. On the CPU the training
//! quantizers (`quantize_q`, `quantize_ps`, `fixed_point`) are single-pass ops with their own
//! backward (`cpu_quant`), the same numbers again; these tensor ops remain the reference.
//!
//! Every value these produce is exact: scaling by a power of two and `floor`/`round` are exact
//! in f32, and powers of two are built with `powf` on an exact base of 2 (checked in the tests),
//! so the exported integer weights reproduce the eval forward bit for bit.

use burn::tensor::{Distribution, Tensor};

use super::{Rounding, ShiftKind, shift_range};

const LN_2: f64 = std::f64::consts::LN_2;

/// `q` in the forward pass, the gradient of `x` in the backward pass. Written as
/// `q + (x - x.detach())` rather than the usual `x + (q - x).detach()`: the added term is an
/// exact zero, so the forward value is exactly `q` (the usual form is off by rounding).
/// Outside autodiff (or when `x` is not tracked) it is just `q`, two tensor ops fewer.
pub fn straight_through<const D: usize>(x: Tensor<D>, q: Tensor<D>) -> Tensor<D> {
    if x.is_tracked() {
        q.detach() + (x.clone() - x.detach())
    } else {
        q
    }
}

/// Uniform draws in [0, 1) shaped like `x` from the backend's seeded RNG (reproducible under
/// `Device::seed`) for stochastic rounding; none for deterministic rounding.
pub fn draws<const D: usize>(x: &Tensor<D>, rounding: Rounding) -> Option<Tensor<D>> {
    match rounding {
        Rounding::Deterministic => None,
        Rounding::Stochastic => Some(x.random_like(Distribution::Uniform(0.0, 1.0))),
    }
}

/// Rounds to integers: half-to-even, or stochastically floor(x) + Bernoulli(frac(x)) with the
/// backend's seeded RNG (reproducible under `Device::seed`).
pub fn round<const D: usize>(x: Tensor<D>, rounding: Rounding) -> Tensor<D> {
    let noise = draws(&x, rounding);
    round_with(x, noise)
}

/// `round` with the uniform draws given: floor(x) + [u < frac(x)], or half-to-even without them.
pub fn round_with<const D: usize>(x: Tensor<D>, noise: Option<Tensor<D>>) -> Tensor<D> {
    match noise {
        None => x.round(),
        Some(u) => {
            let floor = x.clone().floor();
            let frac = x - floor.clone();
            floor + u.lower(frac).float()
        }
    }
}

/// 2^p for integer-valued p, exact.
pub fn pow2<const D: usize>(p: Tensor<D>) -> Tensor<D> {
    p.ones_like().mul_scalar(2.0).powf(p)
}

/// The integer shift (as floats) and sign of DeepShift-Q for float weights `w`, no gradient.
pub fn q_shift_sign<const D: usize>(
    w: Tensor<D>,
    weight_bits: u32,
    rounding: Rounding,
) -> (Tensor<D>, Tensor<D>) {
    let noise = draws(&w, rounding);
    q_shift_sign_with(w, weight_bits, noise)
}

/// `q_shift_sign` with the uniform draws given (`None`: deterministic).
///
/// round(log2|w|) is computed exactly: |w| = m * 2^e with m in [1, 2), where e comes from the
/// f32 logarithm corrected against exact powers of two, and round(log2 m) = [m > sqrt 2]. A plain
/// `log(|w|) / ln 2` can land on the wrong side of a rounding boundary by an ulp; this way the
/// CPU path and the GPU kernel (which reads e from the exponent bits) agree bit for bit.
pub fn q_shift_sign_with<const D: usize>(
    w: Tensor<D>,
    weight_bits: u32,
    noise: Option<Tensor<D>>,
) -> (Tensor<D>, Tensor<D>) {
    let (lo, hi) = shift_range(ShiftKind::Q, weight_bits);
    let w = w.detach();
    let sign = w.clone().greater_equal_elem(0.0).float().mul_scalar(2.0) - 1.0;
    let mag = w.abs().clamp((lo as f64).exp2(), (hi as f64).exp2());
    let e0 = mag.clone().log().div_scalar(LN_2).floor();
    let pow = pow2(e0.clone());
    let e = e0
        + mag
            .clone()
            .greater_equal(pow.clone().mul_scalar(2.0))
            .float()
        - mag.clone().lower(pow).float();
    let m = mag / pow2(e.clone());
    let up = match noise {
        None => m.greater_elem(std::f64::consts::SQRT_2),
        Some(u) => u.lower(m.log().div_scalar(LN_2)),
    };
    let p = (e + up.float()).clamp(lo as f64, hi as f64);
    (p, sign)
}

/// The power-of-two weights `sign * 2^p` of DeepShift-Q, no gradient: the CubeCL kernel on a GPU
/// backend, tensor ops elsewhere. `noise`: uniform draws for stochastic rounding.
pub fn q_weight<const D: usize>(
    w: Tensor<D>,
    weight_bits: u32,
    noise: Option<Tensor<D>>,
) -> Tensor<D> {
    #[cfg(feature = "gpu-kernels")]
    if super::kernel::applies(&w) {
        let (lo, hi) = shift_range(ShiftKind::Q, weight_bits);
        return super::kernel::shift_q(w.detach(), noise, lo, hi);
    }
    let (p, sign) = q_shift_sign_with(w, weight_bits, noise);
    sign * pow2(p)
}

/// DeepShift-Q forward: power-of-two rounded weights, straight-through gradient.
pub fn quantize_q<const D: usize>(w: Tensor<D>, weight_bits: u32, rounding: Rounding) -> Tensor<D> {
    let noise = draws(&w, rounding);
    if super::cpu_quant::applies(&w) {
        return super::cpu_quant::shift_q(w, noise, weight_bits);
    }
    let q = q_weight(w.clone(), weight_bits, noise);
    straight_through(w, q)
}

/// The integer shift and sign of DeepShift-PS for parameters `shift` and `sign`, no gradient.
pub fn ps_shift_sign<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    weight_bits: u32,
    rounding: Rounding,
) -> (Tensor<D>, Tensor<D>) {
    let noise = ps_draws(&shift, &sign, rounding);
    ps_shift_sign_with(shift, sign, weight_bits, noise)
}

/// Draws for the shift and the sign of DeepShift-PS.
fn ps_draws<const D: usize>(
    shift: &Tensor<D>,
    sign: &Tensor<D>,
    rounding: Rounding,
) -> Option<(Tensor<D>, Tensor<D>)> {
    Some((draws(shift, rounding)?, draws(sign, rounding)?))
}

/// `ps_shift_sign` with the uniform draws for shift and sign given (`None`: deterministic).
pub fn ps_shift_sign_with<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    weight_bits: u32,
    noise: Option<(Tensor<D>, Tensor<D>)>,
) -> (Tensor<D>, Tensor<D>) {
    let (lo, hi) = shift_range(ShiftKind::Ps, weight_bits);
    let (noise_p, noise_s) = noise.unzip();
    let p = round_with(shift.detach().clamp(lo as f64, hi as f64), noise_p);
    let s = round_with(sign.detach(), noise_s).sign();
    (p, s)
}

/// The weights `s * 2^p` of DeepShift-PS, no gradient: the CubeCL kernel on a GPU backend,
/// tensor ops elsewhere.
pub fn ps_weight<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    weight_bits: u32,
    noise: Option<(Tensor<D>, Tensor<D>)>,
) -> Tensor<D> {
    #[cfg(feature = "gpu-kernels")]
    if super::kernel::applies(&shift) {
        let (lo, hi) = shift_range(ShiftKind::Ps, weight_bits);
        return super::kernel::shift_ps(shift.detach(), sign.detach(), noise, lo, hi);
    }
    let (p, s) = ps_shift_sign_with(shift, sign, weight_bits, noise);
    s * pow2(p)
}

/// DeepShift-PS forward `s * 2^p` with the reference gradients: through 2^p for the shift,
/// unscaled for the sign.
pub fn quantize_ps<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    weight_bits: u32,
    rounding: Rounding,
) -> Tensor<D> {
    let noise = ps_draws(&shift, &sign, rounding);
    if super::cpu_quant::applies(&shift) {
        return super::cpu_quant::shift_ps(shift, sign, noise, weight_bits);
    }
    let w = ps_weight(shift.clone(), sign.clone(), weight_bits, noise);
    if !(shift.is_tracked() || sign.is_tracked()) {
        return w;
    }
    // Zero-valued terms that carry the gradients: d/dP = s 2^p ln2, d/dS = 1.
    let dp = w.clone().mul_scalar(LN_2) * (shift.clone() - shift.detach());
    let ds = sign.clone() - sign.detach();
    w + dp + ds
}

/// Fixed-point activation quantization with `int_bits` integer and `frac_bits` fraction bits:
/// the CubeCL kernel on a GPU backend, tensor ops elsewhere; straight-through gradient.
pub fn fixed_point<const D: usize>(x: Tensor<D>, int_bits: u32, frac_bits: u32) -> Tensor<D> {
    if super::cpu_quant::applies(&x) {
        return super::cpu_quant::fixed_point(x, int_bits, frac_bits);
    }
    let q = fixed_point_value(x.clone(), int_bits, frac_bits);
    straight_through(x, q)
}

/// The fixed-point values alone, no gradient.
pub fn fixed_point_value<const D: usize>(x: Tensor<D>, int_bits: u32, frac_bits: u32) -> Tensor<D> {
    #[cfg(feature = "gpu-kernels")]
    if super::kernel::applies(&x) {
        return super::kernel::fixed_point(x.detach(), int_bits, frac_bits);
    }
    let (scale, min, max) = super::fixed_point_constants(int_bits, frac_bits);
    x.detach()
        .mul_scalar(scale)
        .floor()
        .div_scalar(scale)
        .clamp(min, max)
}
