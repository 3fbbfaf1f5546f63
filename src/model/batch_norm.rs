//! Batch norm for burn's CPU backend (`flex`) as one fused op with its own backward pass.
//!
//! burn 0.22.1's `BatchNorm` builds the op from generic tensor ops on flex (swap, reshape, mean,
//! sub, mul, ... each a pass over the activation with its allocation, and as many again in the
//! backward); here the forward is three passes (mean, variance, normalize) and the backward two
//! (per-channel sums, input gradient). A ReLU after the batch norm can run inside it
//! ([`batch_norm_relu_auto`]): in the normalize pass, and in the backward one more pass that
//! masks the gradient by the kept output. The op is a backend extension like
//! [`cpu_conv`](crate::shift::cpu_conv) (see `notes/fused-conv-spike.md`), and
//! [`batch_norm_auto`] keeps burn's `BatchNorm` module as the holder of parameters and running
//! statistics, so records are unchanged.
//!
//! Semantics are burn's (`burn-nn` `BatchNorm::forward`): training mode when the input's device
//! is autodiff and the module's `training` flag is set, normalizing with the batch mean and the
//! biased (population) variance, and updating the running statistics with
//! `running = running * (1 - momentum) + batch * momentum`, the variance biased too.
//!
//! Sums are per plane (one image's channel) in f64 lanes, then over a channel's planes in plane
//! order: the same bits for any thread count.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::{Tensor, TensorData, activation};
use rayon::prelude::*;

use crate::par_buffer::par_written;

use crate::shift::cpu_conv;

/// Forward results on a backend's primitives; `mean`, `var` and `inv_std` are `[channels]`.
pub struct BatchNormForward<B: Backend> {
    pub output: FloatTensor<B>,
    /// The statistics used: the batch's (training) or the given ones (eval).
    pub mean: FloatTensor<B>,
    /// Biased variance, without epsilon.
    pub var: FloatTensor<B>,
    /// `1 / sqrt(var + epsilon)`, what the backward needs.
    pub inv_std: FloatTensor<B>,
}

/// Which gradients the backward should compute (only those of tracked inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub x: bool,
    pub gamma: bool,
    pub beta: bool,
}

/// Gradients of one batch norm; `None` where not wanted.
pub struct BatchNormGrads<B: Backend> {
    pub x: Option<FloatTensor<B>>,
    pub gamma: Option<FloatTensor<B>>,
    pub beta: Option<FloatTensor<B>>,
}

/// What `Autodiff<B>` needs from a backend to differentiate the fused op. Only `Flex` has it.
pub trait BatchNormKernels: Backend {
    /// `x` `[batch, channels, ...]`; `stats` `(mean, var)` for eval mode, `None` for the batch's;
    /// `relu`: a ReLU applied to the output in the same pass.
    fn bn_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormForward<Self>;

    /// Gradients for output gradient `grad`. `batch_stats`: the statistics were the batch's
    /// (they depend on `x`), else constants (eval mode). `relu_out`: the forward's output when
    /// it applied the ReLU, whose gradient mask it gives.
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        batch_stats: bool,
        relu_out: Option<FloatTensor<Self>>,
        wanted: Wanted,
    ) -> BatchNormGrads<Self>;
}

/// The op as seen from `Dispatch`: training mode returns output, batch mean and biased variance.
/// `relu`: the ReLU that follows most batch norms, in the same pass (burn's own ReLU runs on one
/// thread, forward and backward: 5% of a ResNet20 step on two cores).
#[backend_extension(Flex, Autodiff)]
pub trait FusedBatchNorm: Backend {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    fn fused_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self>;
}

/// Output, batch mean and biased batch variance (`[channels]`, not tracked), as
/// `burn::tensor::module::batch_norm_train` (followed by a ReLU if `relu`). Check
/// [`cpu_conv::applies`] first.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let (out, mean, var) = <Dispatch as FusedBatchNorm>::fused_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu,
    );
    (
        Tensor::from_dispatch(out),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(var),
    )
}

/// Normalizes with given statistics, as `burn::tensor::module::batch_norm` (followed by a ReLU
/// if `relu`). The statistics are constants (no gradient reaches them). Check
/// [`cpu_conv::applies`] first.
pub fn batch_norm_eval<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    var: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedBatchNorm>::fused_batch_norm_eval(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        mean.into_dispatch(),
        var.into_dispatch(),
        epsilon,
        relu,
    ))
}

/// `bn.forward(x)` with the fused op where it applies and the fused CPU path is enabled (the
/// switch of [`cpu_conv::enabled`]): same mode choice, same running-statistics update. Off the
/// CPU it is [`batch_norm_short_reductions`], which works around burn's statistics on wgpu.
pub fn batch_norm_auto<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    batch_norm_then(bn, x, false)
}

/// `relu(bn.forward(x))` as [`batch_norm_auto`], the ReLU inside the fused op.
pub fn batch_norm_relu_auto<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    batch_norm_then(bn, x, true)
}

fn batch_norm_then<const D: usize>(bn: &BatchNorm, x: Tensor<D>, relu: bool) -> Tensor<D> {
    let then = |y: Tensor<D>| if relu { activation::relu(y) } else { y };
    if !cpu_conv::applies(&x) {
        return then(batch_norm_short_reductions(bn, x));
    }
    if !cpu_conv::enabled() {
        return then(bn.forward(x));
    }
    let [features] = bn.gamma.shape().dims();
    let dims = x.dims();
    assert!(
        D >= 2 && dims[1] == features,
        "batch norm over {features} features got input {dims:?}"
    );
    let device = x.device();
    if device.is_autodiff() && bn.training.is_enabled() {
        let (out, mean, var) = batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, relu);
        let m = bn.momentum;
        let running_mean = bn.running_mean.value_sync().to_device(&device);
        let running_var = bn.running_var.value_sync().to_device(&device);
        let running_mean = running_mean
            .mul_scalar(1.0 - m)
            .add(mean.detach().mul_scalar(m));
        let running_var = running_var
            .mul_scalar(1.0 - m)
            .add(var.detach().mul_scalar(m));
        bn.running_mean.update(running_mean.detach());
        bn.running_var.update(running_var.detach());
        out
    } else {
        let mean = bn.running_mean.value().to_device(&device);
        let var = bn.running_var.value().to_device(&device);
        batch_norm_eval(
            x,
            bn.gamma.val(),
            bn.beta.val(),
            mean,
            var,
            bn.epsilon,
            relu,
        )
    }
}

/// `bn.forward(x)` from generic tensor ops whose reductions each run over one axis of the
/// input (pixels, then images), for the GPU backends.
///
/// burn 0.22.1's `BatchNorm` computes the training statistics in `ModuleOps::batch_norm_train`'s
/// default (burn-backend `ops/modules/base.rs`): `swap_dims(0, 1)`, reshape to
/// `[channels, batch * pixels]`, `mean_dim(1)`. On wgpu (lavapipe) that gives wrong statistics
/// once a channel holds 131,072 values (ResNet20's first layers at batch 128 on 32x32): the
/// normalized output had std 148 instead of 1, and training diverged (issue 13). At 16,384 and
/// 50,176 values per channel it was right. Same semantics as [`batch_norm_auto`]: batch
/// statistics (biased variance) in training mode on an autodiff device, running ones otherwise.
pub fn batch_norm_short_reductions<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let [features] = bn.gamma.shape().dims();
    assert!(
        D >= 2 && dims[1] == features,
        "batch norm over {features} features got input {dims:?}"
    );
    let (batch, pixels) = (dims[0], dims[2..].iter().product::<usize>());
    let x = x.reshape([batch, features, pixels]);
    let device = x.device();
    let per_channel = |t: Tensor<1>| t.reshape([1, features, 1]);
    let (mean, var) = if device.is_autodiff() && bn.training.is_enabled() {
        let mean = x.clone().mean_dim(2).mean_dim(0);
        let centered = x.clone() - mean.clone();
        let var = (centered.clone() * centered).mean_dim(2).mean_dim(0);
        let m = bn.momentum;
        let running_mean = bn.running_mean.value_sync().to_device(&device);
        let running_var = bn.running_var.value_sync().to_device(&device);
        let batch_mean = mean.clone().detach().reshape([features]);
        let batch_var = var.clone().detach().reshape([features]);
        bn.running_mean.update(
            running_mean
                .mul_scalar(1.0 - m)
                .add(batch_mean.mul_scalar(m)),
        );
        bn.running_var
            .update(running_var.mul_scalar(1.0 - m).add(batch_var.mul_scalar(m)));
        (mean, var)
    } else {
        (
            per_channel(bn.running_mean.value().to_device(&device)),
            per_channel(bn.running_var.value().to_device(&device)),
        )
    };
    let std = (var + bn.epsilon).sqrt();
    let out = (x - mean) / std * per_channel(bn.gamma.val()) + per_channel(bn.beta.val());
    out.reshape(dims)
}

impl FusedBatchNorm for Flex {
    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let f = Self::bn_forward(x, gamma, beta, None, epsilon, relu);
        (f.output, f.mean, f.var)
    }

    fn fused_batch_norm_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> FlexTensor {
        Self::bn_forward(x, gamma, beta, Some((mean, var)), epsilon, relu).output
    }
}

/// Backward step. State: checkpointed input and gamma, the mean and inverse standard deviation
/// the forward used, whether those were the batch's, and the output if it went through a ReLU
/// (the next layer keeps it anyway).
#[derive(Debug)]
struct BatchNormStep;

type StepState<B> = (
    NodeId,
    NodeId,
    FloatTensor<B>,
    FloatTensor<B>,
    bool,
    Option<FloatTensor<B>>,
);

impl<B: BatchNormKernels> Backward<B, 3> for BatchNormStep {
    type State = StepState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, mean, inv_std, batch_stats, relu_out) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
        let ids = [x_node, gamma_node, beta_node].map(|n| n.map(|n| n.id));
        let wanted = Wanted {
            x: ids[0].is_some(),
            gamma: ids[1].is_some(),
            beta: ids[2].is_some(),
        };
        let g = B::bn_backward(x, gamma, mean, inv_std, grad, batch_stats, relu_out, wanted);
        for (id, grad) in ids.into_iter().zip([g.x, g.gamma, g.beta]) {
            if let (Some(id), Some(grad)) = (id, grad) {
                grads.register::<B>(id, grad);
            }
        }
    }
}

/// Records the step (when anything is tracked) around the forward kernel; returns the output and
/// the statistics used, untracked.
fn autodiff_forward<B: BatchNormKernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: FloatTensor<Autodiff<B, C>>,
    stats: Option<(FloatTensor<B>, FloatTensor<B>)>,
    epsilon: f64,
    relu: bool,
) -> (FloatTensor<Autodiff<B, C>>, FloatTensor<B>, FloatTensor<B>) {
    let batch_stats = stats.is_none();
    match BatchNormStep
        .prepare::<C>([x.node(), gamma.node(), beta.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let (x_state, gamma_state) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
            let f = B::bn_forward(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
                epsilon,
                relu,
            );
            let relu_out = relu.then(|| f.output.clone());
            let state = (
                x_state,
                gamma_state,
                f.mean.clone(),
                f.inv_std,
                batch_stats,
                relu_out,
            );
            (prep.finish(state, f.output), f.mean, f.var)
        }
        OpsKind::UnTracked(prep) => {
            let f = B::bn_forward(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
                epsilon,
                relu,
            );
            (prep.finish(f.output), f.mean, f.var)
        }
    }
}

impl<B: BatchNormKernels, C: CheckpointStrategy> FusedBatchNorm for Autodiff<B, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (out, mean, var) = autodiff_forward::<B, C>(x, gamma, beta, None, epsilon, relu);
        (out, untracked::<B, C>(mean), untracked::<B, C>(var))
    }

    fn fused_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self> {
        // Running statistics are state, never tracked: used as constants.
        let stats = Some((mean.into_primitive(), var.into_primitive()));
        autodiff_forward::<B, C>(x, gamma, beta, stats, epsilon, relu).0
    }
}

/// A new leaf (no gradient) holding `t`.
fn untracked<B: Backend, C: CheckpointStrategy>(t: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    <FloatTensor<Autodiff<B, C>>>::new(t)
}

impl BatchNormKernels for Flex {
    fn bn_forward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: Option<(FlexTensor, FlexTensor)>,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormForward<Self> {
        let x = x.to_contiguous();
        let shape = x.shape();
        let lay = Layout::of(shape.as_slice());
        let (gamma, beta) = (gamma.to_contiguous(), beta.to_contiguous());
        let (gamma, beta) = (channel_values(&gamma, &lay), channel_values(&beta, &lay));
        let xs = f32s(&x);
        let (mean, var) = match stats {
            None => batch_stats(&lay, xs),
            Some((mean, var)) => {
                let (mean, var) = (mean.to_contiguous(), var.to_contiguous());
                (
                    channel_values(&mean, &lay).to_vec(),
                    channel_values(&var, &lay).to_vec(),
                )
            }
        };
        let inv_std: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32)
            .collect();
        let output = normalize(&lay, xs, gamma, beta, &mean, &inv_std, relu);
        BatchNormForward {
            output: FlexTensor::from_data(TensorData::new(output, shape)),
            mean: channels(mean),
            var: channels(var),
            inv_std: channels(inv_std),
        }
    }

    fn bn_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        inv_std: FlexTensor,
        grad: FlexTensor,
        batch_stats: bool,
        relu_out: Option<FlexTensor>,
        wanted: Wanted,
    ) -> BatchNormGrads<Self> {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let shape = x.shape();
        assert_eq!(shape, grad.shape(), "batch norm backward: gradient shape");
        let lay = Layout::of(shape.as_slice());
        let (gamma, mean, inv_std) = (
            gamma.to_contiguous(),
            mean.to_contiguous(),
            inv_std.to_contiguous(),
        );
        let (gamma, mean, inv_std) = (
            channel_values(&gamma, &lay),
            channel_values(&mean, &lay),
            channel_values(&inv_std, &lay),
        );
        let (xs, dy) = (f32s(&x), f32s(&grad));
        // Through the ReLU first: the gradient where its output was positive.
        let relu_out = relu_out.map(|o| o.to_contiguous());
        let masked = relu_out.as_ref().map(|out| {
            let out = f32s(out);
            assert_eq!(
                out.len(),
                dy.len(),
                "batch norm backward: ReLU output shape"
            );
            // SAFETY: every element of each plane is written.
            unsafe {
                par_written(lay.plane, lay.planes, lay.min_planes(), |p, d| {
                    let at = p * lay.plane..(p + 1) * lay.plane;
                    for ((d, &g), &o) in d.iter_mut().zip(&dy[at.clone()]).zip(&out[at]) {
                        d.write(relu_backward(g, o));
                    }
                })
            }
        });
        let dy = masked.as_deref().unwrap_or(dy);
        // Per channel: sum(dy) and sum(dy * (x - mean)).
        let needs_sums = wanted.gamma || wanted.beta || (wanted.x && batch_stats);
        let sums = needs_sums.then(|| {
            channel_sums(&lay, |p, c| {
                let at = p * lay.plane..(p + 1) * lay.plane;
                sum_dy_and_dy_dev(&dy[at.clone()], &xs[at], f64::from(mean[c]))
            })
        });
        let dx = wanted.x.then(|| {
            let coeffs: Vec<[f32; 3]> = (0..lay.channels)
                .map(|c| {
                    let k = f64::from(gamma[c]) * f64::from(inv_std[c]);
                    let (a, b) = match (&sums, batch_stats) {
                        (Some(s), true) => {
                            let n = lay.per_channel() as f64;
                            let is = f64::from(inv_std[c]);
                            (s[c][0] / n, s[c][1] / n * is * is)
                        }
                        _ => (0.0, 0.0),
                    };
                    [k as f32, a as f32, b as f32]
                })
                .collect();
            let dx = grad_input(&lay, xs, dy, mean, &coeffs);
            FlexTensor::from_data(TensorData::new(dx, shape.clone()))
        });
        let per_channel = |f: &dyn Fn(usize, &[f64; 2]) -> f32| {
            let s = sums.as_ref().expect("sums computed for gamma and beta");
            channels(s.iter().enumerate().map(|(c, s)| f(c, s)).collect())
        };
        BatchNormGrads {
            x: dx,
            gamma: wanted
                .gamma
                .then(|| per_channel(&|c, s| (s[1] * f64::from(inv_std[c])) as f32)),
            beta: wanted.beta.then(|| per_channel(&|_, s| s[0] as f32)),
        }
    }
}

/// `[batch, channels, plane]` view of a `[batch, channels, ...]` tensor.
#[derive(Debug, Clone, Copy)]
struct Layout {
    channels: usize,
    /// Elements of one image's channel (the product of the dims after the channel dim).
    plane: usize,
    planes: usize,
}

impl Layout {
    fn of(dims: &[usize]) -> Self {
        assert!(dims.len() >= 2, "batch norm takes [batch, channels, ...]");
        let (batch, channels) = (dims[0], dims[1]);
        let plane = dims[2..].iter().product();
        assert!(
            batch * plane > 0 && channels > 0,
            "batch norm of an empty tensor {dims:?}"
        );
        Self {
            channels,
            plane,
            planes: batch * channels,
        }
    }

    /// Values each channel's statistics are taken over.
    fn per_channel(&self) -> usize {
        self.planes / self.channels * self.plane
    }

    /// Planes per rayon task: a few thousand elements at least.
    fn min_planes(&self) -> usize {
        (8192 / self.plane).max(1)
    }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused batch norm takes contiguous f32 tensors (see `cpu_conv::applies`)")
}

fn channel_values<'a>(t: &'a FlexTensor, lay: &Layout) -> &'a [f32] {
    let v = f32s(t);
    assert_eq!(
        v.len(),
        lay.channels,
        "batch norm: per-channel tensor length"
    );
    v
}

fn channels(v: Vec<f32>) -> FlexTensor {
    let n = v.len();
    FlexTensor::from_data(TensorData::new(v, [n]))
}

/// Per-channel sums of `f(plane, channel)`: planes in parallel, then each channel's planes
/// added in plane order, so the result does not depend on the thread count.
fn channel_sums<const K: usize>(
    lay: &Layout,
    f: impl Fn(usize, usize) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let per_plane: Vec<[f64; K]> = (0..lay.planes)
        .into_par_iter()
        .with_min_len(lay.min_planes())
        .map(|p| f(p, p % lay.channels))
        .collect();
    let mut sums = vec![[0.0f64; K]; lay.channels];
    for (p, v) in per_plane.iter().enumerate() {
        for (s, v) in sums[p % lay.channels].iter_mut().zip(v) {
            *s += v;
        }
    }
    sums
}

/// Batch mean and biased variance per channel, two passes in f64.
fn batch_stats(lay: &Layout, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = lay.per_channel() as f64;
    let plane = |p: usize| &x[p * lay.plane..(p + 1) * lay.plane];
    let mean: Vec<f64> = channel_sums(lay, |p, _| [lane_sum(plane(p), |v| v)])
        .into_iter()
        .map(|[s]| s / n)
        .collect();
    let var: Vec<f32> = channel_sums(lay, |p, c| {
        let m = mean[c];
        [lane_sum(plane(p), |v| (v - m) * (v - m))]
    })
    .into_iter()
    .map(|[s]| (s / n) as f32)
    .collect();
    (mean.into_iter().map(|m| m as f32).collect(), var)
}

/// `sum f(x)` over `xs` in f64, eight independent lanes (so it vectorizes), lanes added in a
/// fixed order.
#[inline]
fn lane_sum(xs: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(f64::from(v));
        }
    }
    let tail: f64 = rest.iter().map(|&v| f(f64::from(v))).sum();
    acc.iter().sum::<f64>() + tail
}

/// `[sum dy, sum dy * (x - mean)]` over one plane, in f64 lanes as [`lane_sum`].
#[inline]
fn sum_dy_and_dy_dev(dy: &[f32], x: &[f32], mean: f64) -> [f64; 2] {
    let (mut s0, mut s1) = ([0.0f64; 8], [0.0f64; 8]);
    let (dc, xc) = (dy.chunks_exact(8), x.chunks_exact(8));
    let (dr, xr) = (dc.remainder(), xc.remainder());
    for (d, x) in dc.zip(xc) {
        for i in 0..8 {
            let g = f64::from(d[i]);
            s0[i] += g;
            s1[i] += g * (f64::from(x[i]) - mean);
        }
    }
    let mut t = [0.0f64; 2];
    for (&d, &x) in dr.iter().zip(xr) {
        t[0] += f64::from(d);
        t[1] += f64::from(d) * (f64::from(x) - mean);
    }
    [s0.iter().sum::<f64>() + t[0], s1.iter().sum::<f64>() + t[1]]
}

/// `y = (x - mean) * (gamma * inv_std) + beta`, one pass, then `relu(y)` if `relu`.
fn normalize(
    lay: &Layout,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    relu: bool,
) -> Vec<f32> {
    // SAFETY: every element of each plane is written.
    unsafe {
        par_written(lay.plane, lay.planes, lay.min_planes(), |p, y| {
            let x = &x[p * lay.plane..][..lay.plane];
            let c = p % lay.channels;
            let (m, k, b) = (mean[c], gamma[c] * inv_std[c], beta[c]);
            if relu {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write(relu_forward((x - m) * k + b));
                }
            } else {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write((x - m) * k + b);
                }
            }
        })
    }
}

/// burn's ReLU: 0 where `v <= 0`, so a NaN passes (and a diverged run is still seen).
#[inline(always)]
fn relu_forward(v: f32) -> f32 {
    if v <= 0.0 { 0.0 } else { v }
}

/// burn's ReLU gradient: `dy` except where the output is `<= 0`.
#[inline(always)]
fn relu_backward(dy: f32, out: f32) -> f32 {
    if out <= 0.0 { 0.0 } else { dy }
}

/// `dx = k * (dy - a - (x - mean) * b)` with per-channel `[k, a, b]`: `k = gamma * inv_std`,
/// and for batch statistics `a = mean(dy)`, `b = mean(dy * (x - mean)) * inv_std²` (zero for
/// constant statistics).
fn grad_input(lay: &Layout, x: &[f32], dy: &[f32], mean: &[f32], coeffs: &[[f32; 3]]) -> Vec<f32> {
    // SAFETY: every element of each plane is written.
    unsafe {
        par_written(lay.plane, lay.planes, lay.min_planes(), |p, dx| {
            let (x, dy) = (
                &x[p * lay.plane..][..lay.plane],
                &dy[p * lay.plane..][..lay.plane],
            );
            let c = p % lay.channels;
            let ([k, a, b], m) = (coeffs[c], mean[c]);
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                dx.write(k * (dy - a - (x - m) * b));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Param, RunningState};
    use burn::nn::BatchNormConfig;
    use burn::tensor::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random<const D: usize>(shape: [usize; D], offset: f32, rng: &mut ChaCha8Rng) -> TensorData {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| offset + rng.random_range(-1.0f32..1.0))
            .collect();
        TensorData::new(v, shape)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 data")
    }

    /// max |got - want| relative to max |want|.
    fn rel_err(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len(), "lengths differ");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        max_abs_diff(got, want) / scale
    }

    fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len(), "lengths differ");
        got.iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        let e = rel_err(got, want);
        assert!(e <= tol, "{what}: relative max-norm error {e:e} > {tol:e}");
    }

    /// A fresh module (running statistics are shared between clones) with non-trivial gamma,
    /// beta and running statistics.
    fn module(channels: usize, seed: u64, training: bool, device: &Device) -> BatchNorm {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bn = BatchNormConfig::new(channels).init(device);
        let mut p = |off: f32| Tensor::<1>::from_data(random([channels], off, &mut rng), device);
        bn.gamma = Param::from_tensor(p(1.0));
        bn.beta = Param::from_tensor(p(0.0));
        bn.running_mean = RunningState::new(p(0.0));
        bn.running_var = RunningState::new(p(1.5));
        bn.training = Param::from_bool(training);
        bn
    }

    /// Output, gradients (x, gamma, beta) of `sum(out * r)`, running mean and var after the step.
    struct Run {
        out: Vec<f32>,
        grads: Option<[Vec<f32>; 3]>,
        running: [Vec<f32>; 2],
    }

    struct Case<const D: usize> {
        x: TensorData,
        r: TensorData,
        seed: u64,
        training: bool,
    }

    impl<const D: usize> Case<D> {
        fn new(shape: [usize; D], offset: f32, seed: u64, training: bool) -> Self {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Self {
                x: random(shape, offset, &mut rng),
                r: random(shape, 0.0, &mut rng),
                seed,
                training,
            }
        }

        fn run(&self, device: &Device, fused: bool) -> Run {
            self.run_with(device, |bn, x| {
                if fused {
                    assert!(cpu_conv::applies(&x));
                    with_fused(true, || batch_norm_auto(bn, x))
                } else {
                    bn.forward(x)
                }
            })
        }

        fn run_with(&self, device: &Device, f: impl Fn(&BatchNorm, Tensor<D>) -> Tensor<D>) -> Run {
            let channels = self.x.shape()[1];
            let bn = module(channels, self.seed, self.training, device);
            let mut x = Tensor::<D>::from_data(self.x.clone(), device);
            if device.is_autodiff() {
                x = x.require_grad();
            }
            let out = f(&bn, x.clone());
            let grads = device.is_autodiff().then(|| {
                let r = Tensor::<D>::from_data(self.r.clone(), device);
                let g = (out.clone() * r).sum().backward();
                [
                    values(x.grad(&g).expect("x gradient")),
                    values(bn.gamma.grad(&g).expect("gamma gradient")),
                    values(bn.beta.grad(&g).expect("beta gradient")),
                ]
            });
            Run {
                out: values(out),
                grads,
                running: [
                    values(bn.running_mean.value_sync()),
                    values(bn.running_var.value_sync()),
                ],
            }
        }

        fn check(&self, device: &Device) {
            let what = format!(
                "{:?} training {} autodiff {}",
                self.x.shape(),
                self.training,
                device.is_autodiff()
            );
            compare(&what, &self.run(device, true), &self.run(device, false));
        }
    }

    fn with_fused<R>(on: bool, f: impl FnOnce() -> R) -> R {
        let before = cpu_conv::enabled();
        cpu_conv::set_enabled(on);
        let r = f();
        cpu_conv::set_enabled(before);
        r
    }

    fn compare(what: &str, got: &Run, want: &Run) {
        assert_close(&format!("output {what}"), &got.out, &want.out, 1e-5);
        match (&got.grads, &want.grads) {
            (Some(g), Some(w)) => {
                for (name, g, w) in [
                    ("x", &g[0], &w[0]),
                    ("gamma", &g[1], &w[1]),
                    ("beta", &g[2], &w[2]),
                ] {
                    assert_close(&format!("grad {name} {what}"), g, w, 1e-4);
                }
            }
            (None, None) => {}
            _ => panic!("gradients in one path only: {what}"),
        }
        for (name, g, w) in [
            ("running mean", &got.running[0], &want.running[0]),
            ("running var", &got.running[1], &want.running[1]),
        ] {
            let d = max_abs_diff(g, w);
            assert!(d <= 1e-6, "{name} {what}: differs by {d:e}");
        }
    }

    #[test]
    fn training_matches_burn() {
        let device = Device::flex().autodiff();
        let mut seed = 0;
        for shape in [
            [1, 3, 5, 4],
            [2, 1, 7, 3],
            [5, 16, 6, 9],
            [5, 3, 1, 1],
            [3, 16, 8, 8],
            [1, 1, 11, 13],
            // Several rayon tasks (a task takes at least 8192 values).
            [32, 4, 16, 16],
        ] {
            // Offset 3: a mean well away from zero against a standard deviation of about 0.6.
            for offset in [0.0, 3.0] {
                seed += 1;
                Case::new(shape, offset, seed, true).check(&device);
            }
        }
    }

    #[test]
    fn eval_mode_matches_burn() {
        // A plain device (what `valid()` gives) with either flag, and an autodiff device with
        // training off, whose gradients treat the running statistics as constants.
        let (plain, autodiff) = (Device::flex(), Device::flex().autodiff());
        Case::new([2, 3, 5, 7], 0.5, 1, true).check(&plain);
        Case::new([5, 16, 4, 4], 0.0, 2, false).check(&plain);
        Case::new([2, 3, 5, 7], 0.5, 3, false).check(&autodiff);
        Case::new([1, 16, 3, 8], 0.0, 4, false).check(&autodiff);
    }

    /// Training-mode output and input gradient of `sum(out * r)` in f64 for `[batch, channels]`
    /// data (one value per plane).
    fn reference(x: &[f32], r: &[f32], gamma: &[f32], beta: &[f32]) -> [Vec<f64>; 2] {
        let channels = gamma.len();
        let idx = |c: usize| (0..x.len()).filter(move |i| i % channels == c);
        let (mut out, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        for c in 0..channels {
            let n = idx(c).count() as f64;
            let m = idx(c).map(|i| f64::from(x[i])).sum::<f64>() / n;
            let var = idx(c).map(|i| (f64::from(x[i]) - m).powi(2)).sum::<f64>() / n;
            let is = 1.0 / (var + 1e-5).sqrt();
            let h = |i: usize| (f64::from(x[i]) - m) * is;
            let a = idx(c).map(|i| f64::from(r[i])).sum::<f64>() / n;
            let b = idx(c).map(|i| f64::from(r[i]) * h(i)).sum::<f64>() / n;
            let k = f64::from(gamma[c]) * is;
            for i in idx(c) {
                out[i] = h(i) * f64::from(gamma[c]) + f64::from(beta[c]);
                dx[i] = k * (f64::from(r[i]) - a - h(i) * b);
            }
        }
        [out, dx]
    }

    #[test]
    fn two_values_per_channel_against_f64() {
        // With two values per channel the input gradient cancels down to eps / (var + eps) of
        // its terms, so burn's and the fused values differ by more than 1e-4 of their own size
        // (both carry the f32 rounding of x - mean, amplified). Both are compared with an f64
        // reference, relative to the size of the terms that cancel (gamma * inv_std * dy).
        let device = Device::flex().autodiff();
        for (seed, offset) in [(7, 0.0), (8, 3.0), (9, 3.0)] {
            let case = Case::new([2, 3, 1, 1], offset, seed, true);
            let (x, r) = (
                case.x.try_to_vec::<f32>().expect("f32"),
                case.r.try_to_vec::<f32>().expect("f32"),
            );
            let bn = module(3, seed, true, &device);
            let (g, b) = (values(bn.gamma.val()), values(bn.beta.val()));
            let [out, dx] = reference(&x, &r, &g, &b);
            let term_scale = (0..6)
                .map(|i| (f64::from(g[i % 3]) * f64::from(r[i])).abs() / 1e-5f64.sqrt())
                .fold(0.0, f64::max);
            for fused in [true, false] {
                let run = case.run(&device, fused);
                let grads = run.grads.expect("gradients");
                let e_out = run
                    .out
                    .iter()
                    .zip(&out)
                    .map(|(a, b)| (f64::from(*a) - b).abs());
                let e_dx = grads[0]
                    .iter()
                    .zip(&dx)
                    .map(|(a, b)| (f64::from(*a) - b).abs());
                let (e_out, e_dx) = (e_out.fold(0.0, f64::max), e_dx.fold(0.0, f64::max));
                assert!(
                    e_out <= 1e-5,
                    "fused {fused} seed {seed}: output off by {e_out:e}"
                );
                assert!(
                    e_dx <= 1e-6 * term_scale,
                    "fused {fused} seed {seed}: input gradient off by {e_dx:e} (terms {term_scale:e})"
                );
            }
        }
    }

    /// The ReLU inside the fused op gives burn's `relu(bn.forward(x))`: output, gradients (none
    /// where the output was clipped), running statistics; training and eval.
    #[test]
    fn bn_relu_matches_burn() {
        let device = Device::flex().autodiff();
        let fused = |bn: &BatchNorm, x| with_fused(true, || batch_norm_relu_auto(bn, x));
        let burn = |bn: &BatchNorm, x| activation::relu(bn.forward(x));
        for (i, (shape, offset, training)) in [
            ([3, 16, 8, 8], 0.0, true),
            ([32, 4, 16, 16], 3.0, true),
            ([2, 3, 5, 7], 0.5, false),
        ]
        .into_iter()
        .enumerate()
        {
            let case = Case::new(shape, offset, 40 + i as u64, training);
            let (got, want) = (case.run_with(&device, fused), case.run_with(&device, burn));
            compare(&format!("relu {shape:?} training {training}"), &got, &want);
            let clipped = got.out.iter().filter(|&&v| v == 0.0).count();
            assert!(
                clipped > got.out.len() / 10 && clipped < got.out.len() * 9 / 10,
                "{shape:?}: {clipped} of {} outputs clipped",
                got.out.len()
            );
        }
        let rank2 = Case::new([6, 5], 0.5, 45, true);
        compare(
            "relu [6, 5]",
            &rank2.run_with(&device, |bn, x| {
                with_fused(true, || batch_norm_relu_auto(bn, x))
            }),
            &rank2.run_with(&device, |bn, x| activation::relu(bn.forward(x))),
        );
    }

    #[test]
    fn other_ranks_match_burn() {
        let device = Device::flex().autodiff();
        Case::new([4, 5], 0.0, 5, true).check(&device);
        Case::new([3, 5, 7], 1.0, 6, true).check(&device);
    }

    /// The GPU path's batch norm (issue 13) keeps burn's semantics: output, gradients and
    /// running statistics, training and eval, on the CPU where burn's own path is right.
    #[test]
    fn short_reductions_match_burn() {
        let autodiff = Device::flex().autodiff();
        for (i, (shape, training)) in [
            ([4, 3, 5, 7], true),
            ([16, 8, 6, 6], true),
            ([4, 3, 5, 7], false),
        ]
        .into_iter()
        .enumerate()
        {
            let case = Case::new(shape, 2.0, 20 + i as u64, training);
            let short = case.run_with(&autodiff, batch_norm_short_reductions);
            let burn = case.run(&autodiff, false);
            compare(&format!("{shape:?} training {training}"), &short, &burn);
        }
        let rank2 = Case::new([6, 5], 0.5, 30, true);
        compare(
            "[6, 5]",
            &rank2.run_with(&autodiff, batch_norm_short_reductions),
            &rank2.run(&autodiff, false),
        );
    }

    #[test]
    fn the_burn_switch_keeps_burns_path() {
        let device = Device::flex().autodiff();
        let case = Case::new([2, 3, 4, 4], 0.0, 7, true);
        let x = Tensor::<4>::from_data(case.x.clone(), &device);
        let bn = module(3, 7, true, &device);
        let got = values(with_fused(false, || batch_norm_auto(&bn, x.clone())));
        let want = values(module(3, 7, true, &device).forward(x));
        assert!(got == want, "bitwise burn's");
    }

    #[test]
    fn the_comparison_can_fail() {
        let device = Device::flex().autodiff();
        let shape = [3, 4, 5, 5];
        let case = Case::new(shape, 0.0, 8, true);
        let want = case.run(&device, false);
        let planted = |f: &dyn Fn(&mut Run)| {
            let mut bad = case.run(&device, true);
            f(&mut bad);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                compare("planted", &bad, &want)
            }));
            caught.is_err()
        };
        assert!(!planted(&|_| {}), "the fused run itself passes");
        assert!(planted(&|r| r.out[7] += 1e-3));
        assert!(planted(
            &|r| r.grads.as_mut().expect("gradients")[0][3] *= 1.01
        ));
        assert!(planted(
            &|r| r.grads.as_mut().expect("gradients")[1][2] += 1e-2
        ));
        assert!(planted(&|r| r.running[0][1] += 1e-5));
        // Running variance fed with the unbiased batch variance (n / (n - 1)) is caught.
        let (_, _, var) = batch_norm_train(
            Tensor::<4>::from_data(case.x.clone(), &Device::flex()),
            Tensor::ones([4], &Device::flex()),
            Tensor::zeros([4], &Device::flex()),
            1e-5,
            false,
        );
        let var = values(var);
        let n = (shape[0] * shape[2] * shape[3]) as f32;
        assert!(planted(&|r| {
            for (v, b) in r.running[1].iter_mut().zip(&var) {
                *v += 0.1 * b / (n - 1.0);
            }
        }));
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        // 21 images of 5 channels at 40x40: 105 planes in 105 / 5 = 21 tasks.
        let shape = [21, 5, 40, 40];
        let x = random(shape, 0.3, &mut rng);
        let dy = random(shape, 0.0, &mut rng);
        let g = random([5], 1.0, &mut rng);
        let b = random([5], 0.0, &mut rng);
        let all = |threads: usize, relu: bool| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| {
                let t = |d: &TensorData| FlexTensor::from_data(d.clone());
                let f = Flex::bn_forward(t(&x), t(&g), t(&b), None, 1e-5, relu);
                let wanted = Wanted {
                    x: true,
                    gamma: true,
                    beta: true,
                };
                let grads = Flex::bn_backward(
                    t(&x),
                    t(&g),
                    f.mean.clone(),
                    f.inv_std.clone(),
                    t(&dy),
                    true,
                    relu.then(|| f.output.clone()),
                    wanted,
                );
                let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().expect("f32 data");
                [
                    v(f.output),
                    v(f.mean),
                    v(f.var),
                    v(grads.x.expect("x")),
                    v(grads.gamma.expect("gamma")),
                    v(grads.beta.expect("beta")),
                ]
            })
        };
        for relu in [false, true] {
            assert!(
                all(1, relu) == all(3, relu),
                "bitwise equal for 1 and 3 threads (relu {relu})"
            );
        }
    }
}
