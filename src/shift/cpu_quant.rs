//! The DeepShift quantizers as single-pass CPU operations with their own backward (issue 13).
//!
//! On the CPU the tensor-op quantizers of `quant` cost 6-20 passes over each tensor, forward and
//! backward: the fixed-point quantizer of a shift layer's input reads and writes the whole
//! activation six times and its straight-through gradient adds two more, which made an all-shift
//! ResNet20 train step a quarter slower than the float one. Here each quantizer is one pass
//! forward; the straight-through gradients of the fixed-point and Q quantizers hand the output
//! gradient on unchanged (no pass at all), PS's shift gradient is one pass.
//!
//! The values are the tensor path's bit for bit (tests below, on edge cases and random draws):
//! powers of two from the float's exponent bits as in the GPU kernels (`kernel`), whose scalar
//! rules this module shares, so CPU training, the GPU kernels and the exported integer weights
//! agree. They reach burn as the fused convolution does (`cpu_conv`): a backend extension with
//! `Autodiff` in its list, whose backward steps are written with burn-autodiff's public API.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{ShiftKind, shift_range};

/// Elements per rayon task: big enough that scheduling costs nothing next to the pass.
const CHUNK: usize = 1 << 15;

/// The fixed-point grid: `clamp(floor(x * scale) * inv_scale, min, max)`, all exact in f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    pub scale: f32,
    pub inv_scale: f32,
    pub min: f32,
    pub max: f32,
}

impl FixedPoint {
    pub fn new(int_bits: u32, frac_bits: u32) -> Self {
        let (scale, min, max) = super::fixed_point_constants(int_bits, frac_bits);
        Self {
            scale: scale as f32,
            inv_scale: (1.0 / scale) as f32,
            min: min as f32,
            max: max as f32,
        }
    }

    /// NaN stays NaN (the comparisons leave it alone), so a diverged trial is still seen.
    #[inline(always)]
    fn apply(&self, x: f32) -> f32 {
        let q = (x * self.scale).floor() * self.inv_scale;
        if q < self.min {
            self.min
        } else if q > self.max {
            self.max
        } else {
            q
        }
    }
}

/// The integer range of the shifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShiftBounds {
    pub lo: i32,
    pub hi: i32,
}

impl ShiftBounds {
    pub fn new(kind: ShiftKind, weight_bits: u32) -> Self {
        let (lo, hi) = shift_range(kind, weight_bits);
        Self { lo, hi }
    }
}

/// The quantizers on a backend's own primitives; `Autodiff<B>` differentiates them.
pub trait QuantCpuKernels: Backend {
    fn fixed_point_values(x: FloatTensor<Self>, grid: FixedPoint) -> FloatTensor<Self>;
    /// `noise`: uniform draws of the same shape for stochastic rounding.
    fn shift_q_values(
        w: FloatTensor<Self>,
        noise: Option<FloatTensor<Self>>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self>;
    fn shift_ps_values(
        shift: FloatTensor<Self>,
        sign: FloatTensor<Self>,
        noise: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self>;
    /// `grad * w * ln 2`: DeepShift-PS's gradient of the shift, through 2^p.
    fn ps_shift_grad(grad: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The ops as seen from `Dispatch`. Separate stochastic methods rather than `Option` noise: the
/// extension macro maps bare tensor arguments only.
#[backend_extension(Flex, Autodiff)]
pub trait FusedQuant: Backend {
    fn fused_fixed_point(x: FloatTensor<Self>, grid: FixedPoint) -> FloatTensor<Self>;

    fn fused_shift_q(w: FloatTensor<Self>, bounds: ShiftBounds) -> FloatTensor<Self>;

    fn fused_shift_q_stochastic(
        w: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self>;

    fn fused_shift_ps(
        shift: FloatTensor<Self>,
        sign: FloatTensor<Self>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self>;

    fn fused_shift_ps_stochastic(
        shift: FloatTensor<Self>,
        sign: FloatTensor<Self>,
        noise_shift: FloatTensor<Self>,
        noise_sign: FloatTensor<Self>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self>;
}

/// True when the fused quantizers take this tensor: the fused CPU ops are on
/// ([`super::cpu_conv::enabled`], the one switch for all of them) and it is f32 on flex.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    super::cpu_conv::enabled() && super::cpu_conv::applies(x)
}

/// Fixed-point quantization with the straight-through gradient. Check [`applies`] first.
pub fn fixed_point<const D: usize>(x: Tensor<D>, int_bits: u32, frac_bits: u32) -> Tensor<D> {
    let grid = FixedPoint::new(int_bits, frac_bits);
    Tensor::from_dispatch(<Dispatch as FusedQuant>::fused_fixed_point(
        x.into_dispatch(),
        grid,
    ))
}

/// DeepShift-Q weights `sign(w) 2^round(log2|w|)`, straight-through gradient.
pub fn shift_q<const D: usize>(
    w: Tensor<D>,
    noise: Option<Tensor<D>>,
    weight_bits: u32,
) -> Tensor<D> {
    let bounds = ShiftBounds::new(ShiftKind::Q, weight_bits);
    let out = match noise {
        None => <Dispatch as FusedQuant>::fused_shift_q(w.into_dispatch(), bounds),
        Some(u) => <Dispatch as FusedQuant>::fused_shift_q_stochastic(
            w.into_dispatch(),
            u.into_dispatch(),
            bounds,
        ),
    };
    Tensor::from_dispatch(out)
}

/// DeepShift-PS weights `sign(round S) 2^round(clamp P)` with the reference gradients.
pub fn shift_ps<const D: usize>(
    shift: Tensor<D>,
    sign: Tensor<D>,
    noise: Option<(Tensor<D>, Tensor<D>)>,
    weight_bits: u32,
) -> Tensor<D> {
    let bounds = ShiftBounds::new(ShiftKind::Ps, weight_bits);
    let out = match noise {
        None => <Dispatch as FusedQuant>::fused_shift_ps(
            shift.into_dispatch(),
            sign.into_dispatch(),
            bounds,
        ),
        Some((np, ns)) => <Dispatch as FusedQuant>::fused_shift_ps_stochastic(
            shift.into_dispatch(),
            sign.into_dispatch(),
            np.into_dispatch(),
            ns.into_dispatch(),
            bounds,
        ),
    };
    Tensor::from_dispatch(out)
}

impl FusedQuant for Flex {
    fn fused_fixed_point(x: FlexTensor, grid: FixedPoint) -> FlexTensor {
        Self::fixed_point_values(x, grid)
    }

    fn fused_shift_q(w: FlexTensor, bounds: ShiftBounds) -> FlexTensor {
        Self::shift_q_values(w, None, bounds)
    }

    fn fused_shift_q_stochastic(w: FlexTensor, noise: FlexTensor, b: ShiftBounds) -> FlexTensor {
        Self::shift_q_values(w, Some(noise), b)
    }

    fn fused_shift_ps(shift: FlexTensor, sign: FlexTensor, bounds: ShiftBounds) -> FlexTensor {
        Self::shift_ps_values(shift, sign, None, bounds)
    }

    fn fused_shift_ps_stochastic(
        shift: FlexTensor,
        sign: FlexTensor,
        noise_shift: FlexTensor,
        noise_sign: FlexTensor,
        bounds: ShiftBounds,
    ) -> FlexTensor {
        Self::shift_ps_values(shift, sign, Some((noise_shift, noise_sign)), bounds)
    }
}

/// Straight-through: the output gradient goes to the input unchanged.
#[derive(Debug)]
struct StraightThrough;

impl<B: Backend> Backward<B, 1> for StraightThrough {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |g| g);
    }
}

/// PS: d/dP = g * w * ln 2 and d/dS = g, with `w` the forward's output (the state).
#[derive(Debug)]
struct PsStep;

impl<B: QuantCpuKernels> Backward<B, 2> for PsStep {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [shift, sign] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = sign {
            grads.register::<B>(node.id, grad.clone());
        }
        if let Some(node) = shift {
            grads.register::<B>(node.id, B::ps_shift_grad(grad, ops.state));
        }
    }
}

/// A unary quantizer whose gradient passes straight through to `x`.
fn straight_through<B: QuantCpuKernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    f: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    StraightThrough
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateless(f(x.into_primitive()))
}

fn ps<B: QuantCpuKernels, C: CheckpointStrategy>(
    shift: FloatTensor<Autodiff<B, C>>,
    sign: FloatTensor<Autodiff<B, C>>,
    noise: Option<(FloatTensor<B>, FloatTensor<B>)>,
    bounds: ShiftBounds,
) -> FloatTensor<Autodiff<B, C>> {
    let prep = PsStep
        .prepare::<C>([shift.node(), sign.node()])
        .compute_bound()
        .stateful();
    let w = B::shift_ps_values(shift.into_primitive(), sign.into_primitive(), noise, bounds);
    match prep {
        OpsKind::Tracked(prep) => prep.finish(w.clone(), w),
        OpsKind::UnTracked(prep) => prep.finish(w),
    }
}

impl<B: QuantCpuKernels, C: CheckpointStrategy> FusedQuant for Autodiff<B, C> {
    fn fused_fixed_point(x: FloatTensor<Self>, grid: FixedPoint) -> FloatTensor<Self> {
        straight_through::<B, C>(x, |x| B::fixed_point_values(x, grid))
    }

    fn fused_shift_q(w: FloatTensor<Self>, bounds: ShiftBounds) -> FloatTensor<Self> {
        straight_through::<B, C>(w, |w| B::shift_q_values(w, None, bounds))
    }

    fn fused_shift_q_stochastic(
        w: FloatTensor<Self>,
        noise: FloatTensor<Self>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self> {
        let noise = noise.into_primitive();
        straight_through::<B, C>(w, |w| B::shift_q_values(w, Some(noise), bounds))
    }

    fn fused_shift_ps(
        shift: FloatTensor<Self>,
        sign: FloatTensor<Self>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self> {
        ps::<B, C>(shift, sign, None, bounds)
    }

    fn fused_shift_ps_stochastic(
        shift: FloatTensor<Self>,
        sign: FloatTensor<Self>,
        noise_shift: FloatTensor<Self>,
        noise_sign: FloatTensor<Self>,
        bounds: ShiftBounds,
    ) -> FloatTensor<Self> {
        let noise = (noise_shift.into_primitive(), noise_sign.into_primitive());
        ps::<B, C>(shift, sign, Some(noise), bounds)
    }
}

const SQRT_2: f32 = std::f32::consts::SQRT_2;
const LN_2: f32 = std::f32::consts::LN_2;

/// 2^p for an integer p in [-149, 127], from bits (exact; the shift ranges stay inside).
#[inline(always)]
fn pow2(p: i32) -> f32 {
    if p >= -126 {
        f32::from_bits(((p + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (p + 149))
    }
}

/// DeepShift-Q of one weight, the rule of `quant::q_shift_sign_with` and the GPU kernel:
/// |w| = m 2^e with m in [1, 2) read from the bits, round(log2 m) = [m > sqrt 2] (or, with a draw
/// u, [u < log2 m]), clamped to the range; zero counts as the smallest shift.
#[inline(always)]
fn q_value(x: f32, u: Option<f32>, b: ShiftBounds) -> f32 {
    if x.is_nan() {
        return x;
    }
    // Subnormals are scaled into the normal range first (exactly), so that 2^-127 at 8 bits
    // rounds as the tensor path rounds it (the GPU kernel flushes them instead).
    let (bits, offset) = match x.to_bits() & 0x7f80_0000 {
        0 => ((x * 2f32.powi(64)).to_bits(), 64),
        _ => (x.to_bits(), 0),
    };
    let biased = (bits >> 23) & 0xff;
    let p = if biased == 0 {
        b.lo
    } else {
        let e = biased as i32 - 127 - offset;
        let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
        let up = match u {
            None => m > SQRT_2,
            Some(u) => u < m.ln() / LN_2,
        };
        e + up as i32
    };
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    sign * pow2(p.clamp(b.lo, b.hi))
}

/// Round half to even, or floor(x) + [u < frac(x)] with a draw.
#[inline(always)]
fn round(x: f32, u: Option<f32>) -> f32 {
    match u {
        None => x.round_ties_even(),
        Some(u) => {
            let f = x.floor();
            if u < x - f { f + 1.0 } else { f }
        }
    }
}

/// DeepShift-PS of one weight: `sign(round s) 2^round(clamp(p, lo, hi))`; NaN stays NaN.
#[inline(always)]
fn ps_value(p: f32, s: f32, u: Option<(f32, f32)>, b: ShiftBounds) -> f32 {
    if p.is_nan() || s.is_nan() {
        return p + s;
    }
    let (up, us) = u.unzip();
    let p = round(p.clamp(b.lo as f32, b.hi as f32), up);
    let s = round(s, us);
    let sign = if s > 0.0 {
        1.0
    } else if s < 0.0 {
        -1.0
    } else {
        0.0
    };
    sign * pow2(p as i32)
}

/// The contiguous f32 elements of a tensor and its shape.
fn contiguous(t: FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused quantizers take contiguous f32 tensors (see `applies`)")
}

fn like(t: &FlexTensor, data: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, t.shape()))
}

/// `out[i] = f(i-th elements)` over equally long slices, in parallel chunks.
fn map<const N: usize, F>(inputs: [&[f32]; N], f: F) -> Vec<f32>
where
    F: Fn([f32; N]) -> f32 + Sync,
{
    let n = inputs[0].len();
    assert!(
        inputs.iter().all(|x| x.len() == n),
        "fused quantizer: inputs of different sizes"
    );
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = c * CHUNK;
            fill(chunk, inputs.map(|x| &x[start..start + chunk.len()]), &f);
        });
    out
}

/// One chunk of [`map`].
fn fill<const N: usize, F: Fn([f32; N]) -> f32>(out: &mut [f32], ins: [&[f32]; N], f: &F) {
    vectorized(|| fill_plain(out, ins, f));
}

#[inline(always)]
fn fill_plain<const N: usize, F: Fn([f32; N]) -> f32>(out: &mut [f32], ins: [&[f32]; N], f: &F) {
    for (k, o) in out.iter_mut().enumerate() {
        *o = f(ins.map(|x| x[k]));
    }
}

/// The fixed-point quantizer in place, for the fused convolution, which quantizes each image's
/// input planes in cache just before unfolding them instead of making a pass of its own
/// (`cpu_conv`).
pub(super) fn fixed_point_in_place(buf: &mut [f32], grid: FixedPoint) {
    vectorized(move || {
        for v in buf.iter_mut() {
            *v = grid.apply(*v);
        }
    });
}

/// Runs `body` compiled for AVX2 where the CPU has it (checked at run time): on the baseline
/// x86-64 target `f32::floor` and `round_ties_even` are calls into libm per element, which made
/// the fixed-point pass 13 times slower than with `vroundps` (4.6 vs 0.35 ms on 2M floats,
/// measured here). The closure is inlined into the AVX2 function, so its loop is compiled there.
#[inline(always)]
pub(super) fn vectorized<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only requirement of `avx2`.
        return unsafe { avx2(body) };
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

impl QuantCpuKernels for Flex {
    fn fixed_point_values(x: FlexTensor, grid: FixedPoint) -> FlexTensor {
        let x = contiguous(x);
        let out = map([f32s(&x)], |[v]| grid.apply(v));
        like(&x, out)
    }

    fn shift_q_values(w: FlexTensor, noise: Option<FlexTensor>, bounds: ShiftBounds) -> FlexTensor {
        let w = contiguous(w);
        let out = match noise.map(contiguous) {
            None => map([f32s(&w)], |[v]| q_value(v, None, bounds)),
            Some(u) => map([f32s(&w), f32s(&u)], |[v, u]| q_value(v, Some(u), bounds)),
        };
        like(&w, out)
    }

    fn shift_ps_values(
        shift: FlexTensor,
        sign: FlexTensor,
        noise: Option<(FlexTensor, FlexTensor)>,
        bounds: ShiftBounds,
    ) -> FlexTensor {
        let (p, s) = (contiguous(shift), contiguous(sign));
        let out = match noise {
            None => map([f32s(&p), f32s(&s)], |[p, s]| ps_value(p, s, None, bounds)),
            Some((up, us)) => {
                let (up, us) = (contiguous(up), contiguous(us));
                map(
                    [f32s(&p), f32s(&s), f32s(&up), f32s(&us)],
                    |[p, s, up, us]| ps_value(p, s, Some((up, us)), bounds),
                )
            }
        };
        like(&p, out)
    }

    fn ps_shift_grad(grad: FlexTensor, w: FlexTensor) -> FlexTensor {
        let (g, w) = (contiguous(grad), contiguous(w));
        let out = map([f32s(&g), f32s(&w)], |[g, w]| g * (w * LN_2));
        like(&g, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shift::{Rounding, cpu_conv, quant};
    use burn::tensor::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn t1(v: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    fn vals(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 data")
    }

    /// Equal as values, NaN equal to NaN (zeros of either sign are equal).
    fn assert_same(what: &str, inputs: &[f32], got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g == w || (g.is_nan() && w.is_nan()),
                "{what}: input {:e} gives {g:e}, the tensor path {w:e}",
                inputs[i]
            );
        }
    }

    /// Edge cases of every quantizer plus random values over many binades.
    fn values(seed: u64) -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -3e-42,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
        ];
        for k in -130..=130 {
            let p = (k as f64).exp2() as f32;
            for m in [1.0f32, std::f32::consts::SQRT_2, 1.5] {
                let x = p * m;
                v.extend([x, -x, x.next_up(), x.next_down(), -x.next_up()]);
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        v.extend((0..4000).map(|_| {
            let e: f32 = rng.random_range(-40.0..40.0);
            let s = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
            s * e.exp2()
        }));
        v.extend((0..2000).map(|_| rng.random_range(-12.0f32..12.0)));
        v.retain(|x| x.is_finite() || x.is_infinite());
        v
    }

    #[test]
    fn fixed_point_equals_the_tensor_path() {
        let device = Device::flex();
        let mut xs = values(1);
        xs.push(f32::NAN);
        for (int_bits, frac_bits) in [(1, 1), (2, 3), (4, 4), (8, 24), (16, 16), (32, 32)] {
            let want = vals(quant::fixed_point_value(
                t1(&xs, &device),
                int_bits,
                frac_bits,
            ));
            let got = vals(fixed_point(t1(&xs, &device), int_bits, frac_bits));
            assert_same(
                &format!("fixed point {int_bits}.{frac_bits}"),
                &xs,
                &got,
                &want,
            );
        }
    }

    #[test]
    fn q_and_ps_deterministic_equal_the_tensor_path_at_every_width() {
        let device = Device::flex();
        let xs = values(2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let signs: Vec<f32> = (0..xs.len()).map(|_| rng.random_range(-2.0..2.0)).collect();
        // PS shifts around the range, halves included.
        let shifts: Vec<f32> = (0..xs.len())
            .map(|i| {
                if i % 3 == 0 {
                    (i % 300) as f32 * -0.5
                } else {
                    rng.random_range(-140.0..3.0)
                }
            })
            .collect();
        for bits in 2..=8 {
            let want = vals(quant::q_weight(t1(&xs, &device), bits, None));
            let got = vals(shift_q(t1(&xs, &device), None, bits));
            assert_same(&format!("Q at {bits} bits"), &xs, &got, &want);

            let (p, s) = (t1(&shifts, &device), t1(&signs, &device));
            let want = vals(quant::ps_weight(p.clone(), s.clone(), bits, None));
            let got = vals(shift_ps(p, s, None, bits));
            assert_same(&format!("PS at {bits} bits"), &shifts, &got, &want);
        }
    }

    #[test]
    fn stochastic_q_and_ps_use_the_draws_as_the_tensor_path_does() {
        let device = Device::flex();
        let xs: Vec<f32> = values(4).into_iter().filter(|x| x.is_finite()).collect();
        let n = xs.len();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let u: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
        let u2: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
        let signs: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        let shifts: Vec<f32> = (0..n).map(|_| rng.random_range(-20.0..2.0)).collect();
        for bits in [2, 5, 8] {
            let want = vals(quant::q_weight(
                t1(&xs, &device),
                bits,
                Some(t1(&u, &device)),
            ));
            let got = vals(shift_q(t1(&xs, &device), Some(t1(&u, &device)), bits));
            // log2 of the mantissa comes from f32 `ln` on both paths; allow a disagreement
            // only where the draw lies within 1e-6 of it.
            for i in 0..n {
                let m = f32::from_bits((xs[i].abs().to_bits() & 0x007f_ffff) | 0x3f80_0000);
                let near = (u[i] - m.ln() / LN_2).abs() < 1e-6;
                assert!(
                    got[i] == want[i] || near,
                    "stochastic Q at {bits} bits: w {:e}, u {}: {} vs {}",
                    xs[i],
                    u[i],
                    got[i],
                    want[i]
                );
            }
            let noise = || Some((t1(&u, &device), t1(&u2, &device)));
            let (p, s) = (t1(&shifts, &device), t1(&signs, &device));
            let want = vals(quant::ps_weight(p.clone(), s.clone(), bits, noise()));
            let got = vals(shift_ps(p, s, noise(), bits));
            assert_same(
                &format!("stochastic PS at {bits} bits"),
                &shifts,
                &got,
                &want,
            );
        }
    }

    /// Output and the gradients of every input for loss = sum(q * r), fused or tensor ops.
    fn grads_of(kind: &str, fused: bool, data: &[Vec<f32>], r: &[f32]) -> Vec<Vec<f32>> {
        cpu_conv::set_enabled(fused);
        let device = Device::flex().autodiff();
        let ins: Vec<Tensor<1>> = data.iter().map(|v| t1(v, &device).require_grad()).collect();
        let out = match kind {
            "fixed" => quant::fixed_point(ins[0].clone(), 4, 8),
            "q" => quant::quantize_q(ins[0].clone(), 5, Rounding::Deterministic),
            _ => quant::quantize_ps(ins[0].clone(), ins[1].clone(), 5, Rounding::Deterministic),
        };
        let g = (out.clone() * t1(r, &device)).sum().backward();
        let mut res = vec![vals(out)];
        res.extend(
            ins.iter()
                .map(|t| vals(t.grad(&g).expect("a gradient for every input"))),
        );
        cpu_conv::set_enabled(true);
        res
    }

    #[test]
    fn gradients_equal_the_tensor_paths() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let n = 777;
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-20.0..20.0)).collect();
        let p: Vec<f32> = (0..n).map(|_| rng.random_range(-17.0..1.0)).collect();
        let s: Vec<f32> = (0..n).map(|_| rng.random_range(-1.5..1.5)).collect();
        let r: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        for (kind, data) in [
            ("fixed", vec![x.clone()]),
            ("q", vec![x.iter().map(|v| v * 0.01).collect()]),
            ("ps", vec![p, s]),
        ] {
            let got = grads_of(kind, true, &data, &r);
            let want = grads_of(kind, false, &data, &r);
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let scale = w.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
                let err = g
                    .iter()
                    .zip(w)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 1e-6 * scale,
                    "{kind}: output/gradient {k} differs by {err:e} (scale {scale:e})"
                );
            }
        }
    }

    #[test]
    fn the_avx2_and_the_plain_loop_agree() {
        let xs = values(8);
        let grid = FixedPoint::new(8, 8);
        let b = ShiftBounds::new(ShiftKind::Q, 5);
        let (mut a, mut p) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        let f = |[v]: [f32; 1]| grid.apply(v) + q_value(v, None, b) + ps_value(v, v, None, b);
        fill(&mut a, [&xs], &f);
        fill_plain(&mut p, [&xs], &f);
        assert_same("avx2 vs plain", &xs, &a, &p);
    }

    #[test]
    fn untracked_inputs_and_thread_counts() {
        let device = Device::flex().autodiff();
        let xs = values(7);
        let run = || vals(fixed_point(t1(&xs, &device), 16, 16));
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool")
            .install(run);
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool")
            .install(run);
        assert_same("1 vs 3 threads", &xs, &one, &three);
        let want = vals(quant::fixed_point_value(t1(&xs, &Device::flex()), 16, 16));
        assert_same("untracked on autodiff", &xs, &one, &want);
    }
}
