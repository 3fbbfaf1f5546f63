//! The DeepShift quantizers as burn tensor ops (the path every backend runs), with the
//! straight-through gradients of the reference:
//! - Q: `Wq = sign(W) * 2^round(log2 clamp(|W|))`, dL/dW := dL/dWq.
//! - PS: `w = sign(round(S)) * 2^round(clamp(P))`, dL/dP = g * s * 2^p * ln 2, dL/dS = g.
//! - activations: `clamp(floor(x * 2^F) * 2^-F, -2^(I-1), 2^(I-1) - 1)`, straight-through.
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

/// Rounds to integers: half-to-even, or stochastically floor(x) + Bernoulli(frac(x)) with the
/// backend's seeded RNG (reproducible under `Device::seed`).
pub fn round<const D: usize>(x: Tensor<D>, rounding: Rounding) -> Tensor<D> {
    match rounding {
        Rounding::Deterministic => x.round(),
        Rounding::Stochastic => {
            let floor = x.clone().floor();
            let frac = x - floor.clone();
            let u = frac.random_like(Distribution::Uniform(0.0, 1.0));
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
    let (lo, hi) = shift_range(ShiftKind::Q, weight_bits);
    let w = w.detach();
    let sign = w.clone().greater_equal_elem(0.0).float().mul_scalar(2.0) - 1.0;
    let mag = w.abs().clamp((lo as f64).exp2(), (hi as f64).exp2());
    let log2 = mag.log().div_scalar(LN_2);
    let p = round(log2, rounding).clamp(lo as f64, hi as f64);
    (p, sign)
}

/// DeepShift-Q forward: power-of-two rounded weights, straight-through gradient.
pub fn quantize_q<const D: usize>(w: Tensor<D>, weight_bits: u32, rounding: Rounding) -> Tensor<D> {
    let (p, sign) = q_shift_sign(w.clone(), weight_bits, rounding);
    straight_through(w, sign * pow2(p))
}

/// The integer shift and sign of DeepShift-PS for parameters `shift` and `sign`, no gradient.
pub fn ps_shift_sign<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    weight_bits: u32,
    rounding: Rounding,
) -> (Tensor<D>, Tensor<D>) {
    let (lo, hi) = shift_range(ShiftKind::Ps, weight_bits);
    let p = round(shift.detach().clamp(lo as f64, hi as f64), rounding);
    let s = round(sign.detach(), rounding).sign();
    (p, s)
}

/// DeepShift-PS forward `s * 2^p` with the reference gradients: through 2^p for the shift,
/// unscaled for the sign.
pub fn quantize_ps<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    weight_bits: u32,
    rounding: Rounding,
) -> Tensor<D> {
    let (p, s) = ps_shift_sign(shift.clone(), sign.clone(), weight_bits, rounding);
    let w = s * pow2(p);
    if !(shift.is_tracked() || sign.is_tracked()) {
        return w;
    }
    // Zero-valued terms that carry the gradients: d/dP = s 2^p ln2, d/dS = 1.
    let dp = w.clone().mul_scalar(LN_2) * (shift.clone() - shift.detach());
    let ds = sign.clone() - sign.detach();
    w + dp + ds
}

/// Fixed-point activation quantization with `int_bits` integer and `frac_bits` fraction bits.
pub fn fixed_point<const D: usize>(x: Tensor<D>, int_bits: u32, frac_bits: u32) -> Tensor<D> {
    let scale = (frac_bits as f64).exp2();
    let half = ((int_bits as f64) - 1.0).exp2();
    let q = x
        .clone()
        .detach()
        .mul_scalar(scale)
        .floor()
        .div_scalar(scale)
        .clamp(-half, half - 1.0);
    straight_through(x, q)
}
