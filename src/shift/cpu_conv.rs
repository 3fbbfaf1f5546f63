//! A 2-D convolution for burn's CPU backend (`flex`) with its own forward and backward pass, run
//! inside burn's autodiff: every CPU convolution of the models (float and shift layers).
//!
//! How it reaches burn (see `notes/fused-conv-spike.md`): `FusedConv2d` is a backend extension
//! (`#[backend_extension(Flex, Autodiff)]`, the mechanism `kernel` uses for the GPU quantizers).
//! The macro routes a `Dispatch` tensor to the `Flex` implementation, or, for a tensor on an
//! autodiff device, to our `Autodiff<B, C>` implementation, which records a burn-autodiff
//! `Backward` step whose backward pass calls [`Conv2dKernels::conv2d_backward`].
//!
//! The kernels work on NCHW f32 data as stored, one image per rayon task, no NHWC round trip:
//! - forward: per group, `Y_g = W_g · col_g` with `col_g` the `[cig·kh·kw × oh·ow]` unfolding
//!   of the image (rows in the weight's own (ci, i, j) order, so `W_g` is used as stored);
//!   the bias is written into `Y_g` first and the gemm accumulates onto it;
//! - weight gradient: `dW_g += dY_g · col_gᵀ`, summed per chunk of images, then over chunks;
//! - input gradient: `dcol = W_gᵀ · dY_g` (one gemm), then each row of `dcol` is added back onto
//!   the input plane at its kernel offset. That accumulation is a shifted row add (contiguous at
//!   stride 1), not a scatter through index tables: it costs one add per element of `dcol`,
//!   1/cog of the gemm's multiply-adds, and each task owns its image, so no atomics;
//! - 1x1 convolutions at stride 1 without padding skip the unfolding (`col_g` is the image);
//! - depthwise convolutions (one input channel per group) skip the gemm: `depthwise`;
//! - stride-1 convolutions with one group and rows of eight pixels or more skip the unfolding
//!   and gemm's packing: `direct` (an implicit gemm on zero-padded planes).
//!
//! The gemm is the `gemm` crate flex itself uses, single-threaded inside a task.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, Dispatch, DispatchDevice, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::par_buffer::par_filled;
use std::cell::RefCell;

use super::cpu_quant::{FixedPoint, fixed_point_in_place};

mod depthwise;
mod direct;

/// Stride, symmetric padding and groups of a convolution (dilation is 1), and the fixed-point
/// quantization of its input, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub groups: usize,
    /// Integer and fraction bits of a fixed-point quantizer applied to the input, with a
    /// straight-through gradient. The fused op applies it while unfolding the input (no pass of
    /// its own); elsewhere [`conv2d_auto`] quantizes first.
    pub fixed_point_input: Option<(u32, u32)>,
}

impl Conv2dParams {
    pub fn new(stride: [usize; 2], padding: [usize; 2], groups: usize) -> Self {
        Self {
            stride,
            padding,
            groups,
            fixed_point_input: None,
        }
    }

    /// The same convolution of the input quantized to fixed point (shift layers).
    pub fn with_fixed_point_input(mut self, int_bits: u32, frac_bits: u32) -> Self {
        self.fixed_point_input = Some((int_bits, frac_bits));
        self
    }

    /// The same stride and padding in both directions, no groups: the layers' convolutions.
    pub fn square(stride: usize, padding: usize) -> Self {
        Self::new([stride, stride], [padding, padding], 1)
    }

    /// The same convolution as burn's options, for `burn::tensor::module::conv2d`.
    pub fn options(&self) -> ConvOptions<2> {
        ConvOptions::new(self.stride, self.padding, [1, 1], self.groups)
    }
}

/// Which gradients the backward pass should compute (only those of tracked inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub x: bool,
    pub weight: bool,
    pub bias: bool,
}

/// Gradients of one convolution; `None` where not wanted.
pub struct Conv2dGrads<B: Backend> {
    pub x: Option<FloatTensor<B>>,
    pub weight: Option<FloatTensor<B>>,
    pub bias: Option<FloatTensor<B>>,
}

/// What a backend provides so that `Autodiff<B>` can differentiate the fused op: forward and
/// backward on its own primitives. Only `Flex` implements it today.
pub trait Conv2dKernels: Backend {
    /// `x` `[batch, cin, h, w]`, `weight` `[cout, cin / groups, kh, kw]`, `bias` `[cout]`.
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        params: Conv2dParams,
    ) -> FloatTensor<Self>;

    /// Gradients for output gradient `grad`; the bias gradient needs no bias value.
    fn conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        params: Conv2dParams,
        wanted: Wanted,
    ) -> Conv2dGrads<Self>;
}

/// The op as seen from `Dispatch`. Two methods rather than an `Option` bias: the extension macro
/// maps bare tensor arguments only.
#[backend_extension(Flex, Autodiff)]
pub trait FusedConv2d: Backend {
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        params: Conv2dParams,
    ) -> FloatTensor<Self>;

    fn fused_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        params: Conv2dParams,
    ) -> FloatTensor<Self>;
}

thread_local! {
    /// This thread's choice (see [`enabled`]); `None` until first read.
    static ENABLED: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether convolutions (and batch norm, `model::batch_norm`) on the CPU take the fused path on
/// this thread: yes unless the environment says `DSNN_HPO_CPU_CONV=burn` (burn's own ops, to
/// compare or to rule the fused ones out) or [`set_enabled`] said otherwise.
pub fn enabled() -> bool {
    ENABLED.with(|e| match e.get() {
        Some(on) => on,
        None => {
            let on = std::env::var("DSNN_HPO_CPU_CONV").as_deref() != Ok("burn");
            e.set(Some(on));
            on
        }
    })
}

/// Chooses the path for this thread (benchmarks and tests compare the two side by side).
pub fn set_enabled(on: bool) {
    ENABLED.with(|e| e.set(Some(on)));
}

/// The layers' convolution: the fused one where it applies and is [`enabled`], else burn's
/// `conv2d` with the same options (GPUs).
pub fn conv2d_auto(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    params: Conv2dParams,
) -> Tensor<4> {
    if enabled() && applies(&x) {
        conv2d(x, weight, bias, params)
    } else {
        let x = match params.fixed_point_input {
            Some((i, f)) => super::quant::fixed_point(x, i, f),
            None => x,
        };
        burn::tensor::module::conv2d(x, weight, bias, params.options())
    }
}

/// True when [`conv2d`] can take this tensor: f32 on the flex device, with or without autodiff.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// The fused convolution on `Tensor`s; same semantics as `burn::tensor::module::conv2d` with
/// `params.options()`. Check [`applies`] first: other devices panic.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    params: Conv2dParams,
) -> Tensor<4> {
    let out = match bias {
        None => <Dispatch as FusedConv2d>::fused_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            params,
        ),
        Some(b) => <Dispatch as FusedConv2d>::fused_conv2d_bias(
            x.into_dispatch(),
            weight.into_dispatch(),
            b.into_dispatch(),
            params,
        ),
    };
    Tensor::from_dispatch(out)
}

impl FusedConv2d for Flex {
    fn fused_conv2d(x: FlexTensor, weight: FlexTensor, params: Conv2dParams) -> FlexTensor {
        Self::conv2d_forward(x, weight, None, params)
    }

    fn fused_conv2d_bias(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        params: Conv2dParams,
    ) -> FlexTensor {
        Self::conv2d_forward(x, weight, Some(bias), params)
    }
}

/// Backward step without bias: state is the checkpointed input and weight.
#[derive(Debug)]
struct ConvStep;

/// Backward step with bias; the bias value itself is not needed.
#[derive(Debug)]
struct ConvBiasStep;

type ConvState = (NodeId, NodeId, Conv2dParams);

impl<B: Conv2dKernels> Backward<B, 2> for ConvStep {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x, w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let ids = [x.map(|n| n.id), w.map(|n| n.id), None];
        register_grads::<B>(grads, checkpointer, ops.state, grad, ids);
    }
}

impl<B: Conv2dKernels> Backward<B, 3> for ConvBiasStep {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x, w, b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let ids = [x.map(|n| n.id), w.map(|n| n.id), b.map(|n| n.id)];
        register_grads::<B>(grads, checkpointer, ops.state, grad, ids);
    }
}

/// Runs the backward kernels for the tracked parents (`ids`: input, weight, bias) and registers
/// their gradients.
fn register_grads<B: Conv2dKernels>(
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
    (x_state, w_state, params): ConvState,
    grad: FloatTensor<B>,
    [x_id, w_id, b_id]: [Option<NodeId>; 3],
) {
    let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
    let w = checkpointer.retrieve_node_output::<FloatTensor<B>>(w_state);
    let wanted = Wanted {
        x: x_id.is_some(),
        weight: w_id.is_some(),
        bias: b_id.is_some(),
    };
    let g = B::conv2d_backward(x, w, grad, params, wanted);
    for (id, grad) in [(x_id, g.x), (w_id, g.weight), (b_id, g.bias)] {
        if let (Some(id), Some(grad)) = (id, grad) {
            grads.register::<B>(id, grad);
        }
    }
}

impl<B: Conv2dKernels, C: CheckpointStrategy> FusedConv2d for Autodiff<B, C> {
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        params: Conv2dParams,
    ) -> FloatTensor<Self> {
        match ConvStep
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), params);
                let out =
                    B::conv2d_forward(x.into_primitive(), weight.into_primitive(), None, params);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.into_primitive(),
                weight.into_primitive(),
                None,
                params,
            )),
        }
    }

    fn fused_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        params: Conv2dParams,
    ) -> FloatTensor<Self> {
        match ConvBiasStep
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), params);
                let out = B::conv2d_forward(
                    x.into_primitive(),
                    weight.into_primitive(),
                    Some(bias.into_primitive()),
                    params,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.into_primitive(),
                weight.into_primitive(),
                Some(bias.into_primitive()),
                params,
            )),
        }
    }
}

impl Conv2dKernels for Flex {
    fn conv2d_forward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: Option<FlexTensor>,
        params: Conv2dParams,
    ) -> FlexTensor {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let geo = Geometry::new(dims4(&x), dims4(&weight), params);
        let bias = bias.map(|b| b.to_contiguous());
        let bias = bias.as_ref().map(|b| {
            let b = f32s(b);
            assert_eq!(b.len(), geo.cout, "conv2d: bias length is not cout");
            b
        });
        let out = forward(&geo, f32s(&x), f32s(&weight), bias);
        flex(out, [geo.batch, geo.cout, geo.oh, geo.ow])
    }

    fn conv2d_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        params: Conv2dParams,
        wanted: Wanted,
    ) -> Conv2dGrads<Self> {
        let (x, weight, grad) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            grad.to_contiguous(),
        );
        let geo = Geometry::new(dims4(&x), dims4(&weight), params);
        assert_eq!(
            dims4(&grad),
            [geo.batch, geo.cout, geo.oh, geo.ow],
            "conv2d backward: output gradient shape"
        );
        let (xs, ws, dy) = (f32s(&x), f32s(&weight), f32s(&grad));
        Conv2dGrads {
            x: wanted
                .x
                .then(|| flex(grad_input(&geo, ws, dy), [geo.batch, geo.cin, geo.h, geo.w])),
            weight: wanted.weight.then(|| {
                flex(
                    grad_weight(&geo, xs, dy),
                    [geo.cout, geo.cig, geo.kh, geo.kw],
                )
            }),
            bias: wanted.bias.then(|| flex(grad_bias(&geo, dy), [geo.cout])),
        }
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.shape();
    assert_eq!(shape.num_dims(), 4, "conv2d takes rank-4 tensors");
    shape.dims::<4>()
}

/// The f32 elements of a contiguous tensor.
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused conv2d takes contiguous f32 tensors (see `applies`)")
}

fn flex<const N: usize>(data: Vec<f32>, shape: [usize; N]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// Sizes of one convolution, checked once.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    groups: usize,
    /// Input and output channels per group.
    cig: usize,
    cog: usize,
    /// Fixed-point quantizer of the input, applied while unfolding it.
    grid: Option<FixedPoint>,
}

impl Geometry {
    fn new(x: [usize; 4], weight: [usize; 4], p: Conv2dParams) -> Self {
        let [batch, cin, h, w] = x;
        let [cout, cig, kh, kw] = weight;
        let groups = p.groups;
        assert!(
            groups > 0 && p.stride.iter().all(|&s| s > 0),
            "conv2d: stride and groups must be positive ({p:?})"
        );
        assert!(
            cin > 0 && cout > 0 && h > 0 && w > 0 && kh > 0 && kw > 0,
            "conv2d: empty input {x:?} or weight {weight:?}"
        );
        assert!(
            cig * groups == cin && cout % groups == 0,
            "conv2d: input {x:?} and weight {weight:?} do not fit {groups} groups"
        );
        let [ph, pw] = p.padding;
        assert!(
            h + 2 * ph >= kh && w + 2 * pw >= kw,
            "conv2d: kernel {kh}x{kw} larger than the padded input {h}x{w}"
        );
        Self {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            oh: (h + 2 * ph - kh) / p.stride[0] + 1,
            ow: (w + 2 * pw - kw) / p.stride[1] + 1,
            stride: p.stride,
            pad: p.padding,
            groups,
            cig,
            cog: cout / groups,
            grid: p.fixed_point_input.map(|(i, f)| FixedPoint::new(i, f)),
        }
    }

    /// Depth of one group's gemm: the rows of its unfolded image.
    fn k(&self) -> usize {
        self.cig * self.kh * self.kw
    }

    /// Output pixels per channel: the columns of the gemms.
    fn n(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1 convolution at stride 1 without padding and without input quantizer: the image is
    /// its own unfolding.
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.grid.is_none()
    }

    /// Length of the unfolding buffer (none for pointwise convolutions).
    fn col_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.k() * self.n()
        }
    }

    fn x_image(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn y_image(&self) -> usize {
        self.cout * self.n()
    }

    /// Group `g` of an image as the gemm's `[k × n]` right-hand side: the image itself when
    /// pointwise, else its unfolding written into `col`.
    fn unfolded<'a>(&self, x_img: &'a [f32], g: usize, col: &'a mut [f32]) -> &'a [f32] {
        if self.pointwise() {
            &x_img[g * self.k() * self.n()..][..self.k() * self.n()]
        } else {
            im2col(self, x_img, g, col);
            col
        }
    }
}

/// Output positions `lo..hi` (along one axis) whose input coordinate `o * stride + offset - pad`
/// lies inside `0..input`; the others read padding.
fn valid_range(
    output: usize,
    input: usize,
    stride: usize,
    pad: usize,
    offset: usize,
) -> (usize, usize) {
    let lo = pad.saturating_sub(offset).div_ceil(stride).min(output);
    let hi = (input + pad)
        .saturating_sub(offset)
        .div_ceil(stride)
        .clamp(lo, output);
    (lo, hi)
}

/// Unfolds group `g` of one image into `col`, `[(ci, i, j) × (oy, ox)]` row-major, zero where the
/// kernel lies on the padding.
fn im2col(geo: &Geometry, x_img: &[f32], g: usize, col: &mut [f32]) {
    let hw = geo.h * geo.w;
    let planes = &x_img[g * geo.cig * hw..][..geo.cig * hw];
    match geo.grid {
        None => unfold(geo, planes, col),
        // Quantize the group's planes once (in cache), then unfold those.
        Some(grid) => QUANTIZED.with(|cell| {
            let mut q = cell.borrow_mut();
            q.clear();
            q.extend_from_slice(planes);
            fixed_point_in_place(&mut q, grid);
            unfold(geo, &q, col)
        }),
    }
}

/// The unfolding of one group's input planes (`cig` planes of `h x w`).
fn unfold(geo: &Geometry, planes: &[f32], col: &mut [f32]) {
    let (hw, n) = (geo.h * geo.w, geo.n());
    let ([sh, sw], [ph, pw]) = (geo.stride, geo.pad);
    for ci in 0..geo.cig {
        let plane = &planes[ci * hw..][..hw];
        for i in 0..geo.kh {
            let (y_lo, y_hi) = valid_range(geo.oh, geo.h, sh, ph, i);
            for j in 0..geo.kw {
                let (x_lo, x_hi) = valid_range(geo.ow, geo.w, sw, pw, j);
                let row = &mut col[((ci * geo.kh + i) * geo.kw + j) * n..][..n];
                unfold_row(geo, plane, row, i, j, (y_lo, y_hi), (x_lo, x_hi));
            }
        }
    }
}

/// One row of [`im2col`]: kernel offset (`i`, `j`) of one input plane, zero on the padding.
fn unfold_row(
    geo: &Geometry,
    plane: &[f32],
    row: &mut [f32],
    i: usize,
    j: usize,
    (y_lo, y_hi): (usize, usize),
    (x_lo, x_hi): (usize, usize),
) {
    let ([sh, sw], [ph, pw]) = (geo.stride, geo.pad);
    for (oy, dst) in row.chunks_exact_mut(geo.ow).enumerate() {
        if oy < y_lo || oy >= y_hi {
            dst.fill(0.0);
            continue;
        }
        let src = &plane[(oy * sh + i - ph) * geo.w..][..geo.w];
        dst[..x_lo].fill(0.0);
        dst[x_hi..].fill(0.0);
        if x_lo == x_hi {
            continue;
        }
        if sw == 1 {
            let start = x_lo + j - pw;
            dst[x_lo..x_hi].copy_from_slice(&src[start..start + (x_hi - x_lo)]);
        } else {
            for (ox, d) in (x_lo..x_hi).zip(&mut dst[x_lo..x_hi]) {
                *d = src[ox * sw + j - pw];
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each row of `col` onto the input plane at its kernel offset.
fn col2im_add(geo: &Geometry, col: &[f32], g: usize, dx_img: &mut [f32]) {
    let (hw, n) = (geo.h * geo.w, geo.n());
    let ([sh, sw], [ph, pw]) = (geo.stride, geo.pad);
    for ci in 0..geo.cig {
        let plane = &mut dx_img[(g * geo.cig + ci) * hw..][..hw];
        for i in 0..geo.kh {
            let (y_lo, y_hi) = valid_range(geo.oh, geo.h, sh, ph, i);
            for j in 0..geo.kw {
                let (x_lo, x_hi) = valid_range(geo.ow, geo.w, sw, pw, j);
                let row = &col[((ci * geo.kh + i) * geo.kw + j) * n..][..n];
                if x_lo == x_hi {
                    continue;
                }
                for oy in y_lo..y_hi {
                    let src = &row[oy * geo.ow..][x_lo..x_hi];
                    let dst = &mut plane[(oy * sh + i - ph) * geo.w..][..geo.w];
                    if sw == 1 {
                        let start = x_lo + j - pw;
                        for (d, s) in dst[start..start + src.len()].iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        for (ox, s) in (x_lo..x_hi).zip(src) {
                            dst[ox * sw + j - pw] += s;
                        }
                    }
                }
            }
        }
    }
}

/// A read-only matrix view: element (r, c) at `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// True when every element of a `rows × cols` view with strides `rs`, `cs` lies in `len`.
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst = lhs · rhs` (`dst += lhs · rhs` when `accumulate`), `lhs` `m × k`, `rhs` `k × n`, `dst`
/// row-major with row stride `dst_rs`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..][..n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        fits(dst.len(), m, n, dst_rs, 1)
            && fits(lhs.data.len(), m, k, lhs.rs, lhs.cs)
            && fits(rhs.data.len(), k, n, rhs.rs, rhs.cs),
        "matmul: a view exceeds its buffer"
    );
    // SAFETY: the assert above keeps every element gemm reads or writes inside its slice, and
    // `dst` is a unique borrow, so it aliases neither operand. Strides fit in isize because the
    // slices' lengths do.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Images per weight-gradient chunk, each summing into its own partial gradient. Fixed rather
/// than derived from the thread count, so the gradient's summation order (and its rounding) is
/// the same on every machine.
const IMAGES_PER_CHUNK: usize = 8;

thread_local! {
    /// Each thread's copy of one image's input planes quantized to fixed point (see [`im2col`]).
    static QUANTIZED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's unfolding buffer, kept between calls. A fresh buffer per call is a large
    /// allocation, which glibc serves with a new mmap and a page fault per 4 KiB on first touch:
    /// measured, that cost as much as the gemms of the input gradient.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of `len` floats (contents unspecified). Falls back
/// to a fresh buffer if the thread's is in use, which the kernels never cause (nothing inside
/// `f` re-enters rayon: the gemms run single-threaded).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `[batch, cout, oh, ow]` output.
fn forward(geo: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    if depthwise::applies(geo) {
        depthwise::forward(geo, x, w, bias)
    } else if direct::applies(geo) {
        direct::forward(geo, x, w, bias)
    } else {
        gemm_forward(geo, x, w, bias)
    }
}

/// The unfolding path of [`forward`].
fn gemm_forward(geo: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (k, n, cog) = (geo.k(), geo.n(), geo.cog);
    par_filled(geo.y_image(), geo.batch, 1, |b, y_img| {
        let x_img = &x[b * geo.x_image()..][..geo.x_image()];
        with_scratch(geo.col_len(), |col| {
            for g in 0..geo.groups {
                let y_g = &mut y_img[g * cog * n..][..cog * n];
                if let Some(b) = bias {
                    for (row, &v) in y_g.chunks_exact_mut(n).zip(&b[g * cog..][..cog]) {
                        row.fill(v);
                    }
                }
                let w_g = Mat {
                    data: &w[g * cog * k..][..cog * k],
                    rs: k,
                    cs: 1,
                };
                let col_g = Mat {
                    data: geo.unfolded(x_img, g, col),
                    rs: n,
                    cs: 1,
                };
                matmul(y_g, n, cog, n, k, w_g, col_g, bias.is_some());
            }
        })
    })
}

/// `[batch, cin, h, w]` input gradient.
fn grad_input(geo: &Geometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    if depthwise::applies(geo) {
        depthwise::grad_input(geo, w, dy)
    } else if direct::applies_to_input_gradient(geo) {
        direct::grad_input(geo, w, dy)
    } else {
        gemm_grad_input(geo, w, dy)
    }
}

/// The unfolding path of [`grad_input`]: `dcol = W_gᵀ · dY_g`, folded back by [`col2im_add`].
fn gemm_grad_input(geo: &Geometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, n, cog) = (geo.k(), geo.n(), geo.cog);
    par_filled(geo.x_image(), geo.batch, 1, |b, dx_img| {
        let dy_img = &dy[b * geo.y_image()..][..geo.y_image()];
        with_scratch(geo.col_len(), |dcol| {
            for g in 0..geo.groups {
                // W_gᵀ: element (r, co) of the [k × cog] transpose is w[co * k + r].
                let w_t = Mat {
                    data: &w[g * cog * k..][..cog * k],
                    rs: 1,
                    cs: k,
                };
                let dy_g = Mat {
                    data: &dy_img[g * cog * n..][..cog * n],
                    rs: n,
                    cs: 1,
                };
                if geo.pointwise() {
                    let dx_g = &mut dx_img[g * k * n..][..k * n];
                    matmul(dx_g, n, k, n, cog, w_t, dy_g, false);
                } else {
                    matmul(dcol, n, k, n, cog, w_t, dy_g, false);
                    col2im_add(geo, dcol, g, dx_img);
                }
            }
        })
    })
}

/// `[cout, cig, kh, kw]` weight gradient, the same for any number of threads.
fn grad_weight(geo: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if depthwise::applies(geo) {
        depthwise::grad_weight(geo, x, dy)
    } else if direct::applies(geo) {
        direct::grad_weight(geo, x, dy)
    } else {
        gemm_grad_weight(geo, x, dy)
    }
}

/// The unfolding path of [`grad_weight`]: `dW_g += dY_g · col_gᵀ` over the images of a chunk,
/// then the chunks' sums added in chunk order.
fn gemm_grad_weight(geo: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, n, cog) = (geo.k(), geo.n(), geo.cog);
    let len = geo.cout * k;
    let per_chunk = IMAGES_PER_CHUNK;
    let chunks = geo.batch.div_ceil(per_chunk);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0.0f32; len];
            with_scratch(geo.col_len(), |col| {
                for b in c * per_chunk..((c + 1) * per_chunk).min(geo.batch) {
                    let x_img = &x[b * geo.x_image()..][..geo.x_image()];
                    let dy_img = &dy[b * geo.y_image()..][..geo.y_image()];
                    for g in 0..geo.groups {
                        let dy_g = Mat {
                            data: &dy_img[g * cog * n..][..cog * n],
                            rs: n,
                            cs: 1,
                        };
                        // col_gᵀ: element (p, r) of the [n × k] transpose is col[r * n + p].
                        let col_t = Mat {
                            data: geo.unfolded(x_img, g, col),
                            rs: 1,
                            cs: n,
                        };
                        matmul(
                            &mut acc[g * cog * k..][..cog * k],
                            k,
                            cog,
                            k,
                            n,
                            dy_g,
                            col_t,
                            true,
                        );
                    }
                }
            });
            acc
        })
        .collect();
    sum_in_order(partials, len)
}

/// The chunks' partial weight gradients added in chunk order: the same result for any number
/// of threads.
fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; len];
    for part in partials {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

/// `[cout]` bias gradient: the output gradient summed over images and pixels (in f64).
fn grad_bias(geo: &Geometry, dy: &[f32]) -> Vec<f32> {
    let mut sums = vec![0.0f64; geo.cout];
    for img in dy.chunks_exact(geo.y_image()) {
        for (s, row) in sums.iter_mut().zip(img.chunks_exact(geo.n())) {
            *s += row.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
    }
    sums.into_iter().map(|s| s as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use burn::tensor::module::conv2d as burn_conv2d;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random<const D: usize>(shape: [usize; D], rng: &mut ChaCha8Rng) -> TensorData {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        TensorData::new(v, shape)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 data")
    }

    /// max |got - want| relative to max |want|, the error measure of the tolerances.
    fn rel_err(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len(), "lengths differ");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        let diff = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        diff / scale
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        let e = rel_err(got, want);
        assert!(e <= tol, "{what}: relative max-norm error {e:e} > {tol:e}");
    }

    #[derive(Debug, Clone, Copy)]
    struct Case {
        batch: usize,
        cin: usize,
        cout: usize,
        hw: [usize; 2],
        k: usize,
        params: Conv2dParams,
        bias: bool,
    }

    /// Output, and gradients of x, weight and bias for loss = sum(out * r), on an autodiff device.
    struct Run {
        out: Vec<f32>,
        gx: Vec<f32>,
        gw: Vec<f32>,
        gb: Option<Vec<f32>>,
    }

    struct Inputs {
        x: TensorData,
        w: TensorData,
        b: Option<TensorData>,
        r: TensorData,
    }

    fn inputs(c: &Case, seed: u64) -> Inputs {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let geo = Geometry::new(
            [c.batch, c.cin, c.hw[0], c.hw[1]],
            [c.cout, c.cin / c.params.groups, c.k, c.k],
            c.params,
        );
        Inputs {
            x: random([c.batch, c.cin, c.hw[0], c.hw[1]], &mut rng),
            w: random([c.cout, c.cin / c.params.groups, c.k, c.k], &mut rng),
            b: c.bias.then(|| random([c.cout], &mut rng)),
            r: random([c.batch, c.cout, geo.oh, geo.ow], &mut rng),
        }
    }

    fn run(c: &Case, inp: &Inputs, fused: bool) -> Run {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(inp.x.clone(), &device).require_grad();
        let w = Tensor::<4>::from_data(inp.w.clone(), &device).require_grad();
        let b = inp
            .b
            .clone()
            .map(|b| Tensor::<1>::from_data(b, &device).require_grad());
        let r = Tensor::<4>::from_data(inp.r.clone(), &device);
        let out = if fused {
            assert!(applies(&x));
            conv2d(x.clone(), w.clone(), b.clone(), c.params)
        } else {
            // The reference quantizes the input as a separate op (straight-through gradient).
            let xq = match c.params.fixed_point_input {
                Some((i, f)) => crate::shift::quant::fixed_point(x.clone(), i, f),
                None => x.clone(),
            };
            burn_conv2d(xq, w.clone(), b.clone(), c.params.options())
        };
        let grads = (out.clone() * r).sum().backward();
        Run {
            out: values(out),
            gx: values(x.grad(&grads).expect("x gradient")),
            gw: values(w.grad(&grads).expect("weight gradient")),
            gb: b.map(|b| values(b.grad(&grads).expect("bias gradient"))),
        }
    }

    fn check(c: &Case, seed: u64) {
        let inp = inputs(c, seed);
        let (got, want) = (run(c, &inp, true), run(c, &inp, false));
        let what = format!("{c:?}");
        assert_close(&format!("forward {what}"), &got.out, &want.out, 1e-5);
        assert_close(&format!("grad x {what}"), &got.gx, &want.gx, 1e-4);
        assert_close(&format!("grad w {what}"), &got.gw, &want.gw, 1e-4);
        match (got.gb, want.gb) {
            (Some(g), Some(w)) => assert_close(&format!("grad b {what}"), &g, &w, 1e-4),
            (None, None) => {}
            _ => panic!("bias gradient present in one path only: {what}"),
        }
    }

    #[test]
    fn matches_burn_forward_and_gradients() {
        let mut seed = 0;
        for k in [1, 3] {
            for stride in [1, 2] {
                for pad in [0, 1] {
                    for depthwise in [false, true] {
                        seed += 1;
                        // Vary batch, channels and a non-square image with the seed.
                        let batch = [1, 2, 5][seed as usize % 3];
                        let cin = [3, 4, 8][seed as usize % 3];
                        let (cout, groups) = if depthwise {
                            (cin, cin)
                        } else {
                            ([2, 6, 5][seed as usize % 3], 1)
                        };
                        let case = Case {
                            batch,
                            cin,
                            cout,
                            hw: [7, 6 + seed as usize % 4],
                            k,
                            params: Conv2dParams::new([stride, stride], [pad, pad], groups),
                            bias: seed % 2 == 0,
                        };
                        check(&case, seed);
                    }
                }
            }
        }
    }

    #[test]
    fn matches_burn_on_resnet_like_and_grouped_shapes() {
        let cases = [
            // A ResNet20 block conv, its stride-2 downsampling conv and the 1x1 shortcut.
            (8, 16, 16, [8, 8], 3, [1, 1], [1, 1], 1, false),
            (4, 16, 32, [8, 8], 3, [2, 2], [1, 1], 1, true),
            (4, 16, 32, [8, 8], 1, [2, 2], [0, 0], 1, false),
            // Grouped, neither 1 nor depthwise; channel multiplier 2; unequal strides and pads.
            (3, 6, 9, [5, 7], 3, [1, 1], [1, 1], 3, true),
            (2, 4, 8, [6, 6], 3, [1, 2], [0, 1], 4, true),
            (2, 4, 6, [9, 5], 3, [2, 1], [1, 0], 2, false),
            // One input channel per group (the direct kernels): EfficientNet's 5x5 depthwise at
            // stride 2, a channel multiplier of 3, a single-channel input with groups 1, and
            // rows long enough for the vectorized dot products' tails.
            (3, 6, 6, [11, 9], 5, [2, 2], [2, 2], 6, true),
            (2, 4, 12, [7, 8], 3, [1, 1], [1, 1], 4, false),
            (2, 1, 5, [9, 9], 3, [1, 1], [0, 0], 1, true),
            (2, 3, 3, [5, 21], 3, [1, 2], [1, 1], 3, false),
        ];
        for (i, (batch, cin, cout, hw, k, stride, padding, groups, bias)) in
            cases.into_iter().enumerate()
        {
            let case = Case {
                batch,
                cin,
                cout,
                hw,
                k,
                params: Conv2dParams::new(stride, padding, groups),
                bias,
            };
            check(&case, 100 + i as u64);
        }
    }

    #[test]
    fn a_fixed_point_input_is_quantized_while_unfolding() {
        // Coarse grids (2.3 and 1.2 bits: steps of 1/8 and 1/4, clamped to [-2, 1.875] and
        // [-1, 0.75]) so that quantization changes most values and clamps some; pointwise
        // (no unfolding otherwise), strided, padded and grouped convolutions.
        let cases = [
            (3, 4, 5, [7, 6], 3, [1, 1], [1, 1], 1, (2, 3)),
            (2, 4, 6, [8, 8], 3, [2, 2], [1, 1], 2, (1, 2)),
            (2, 6, 4, [5, 7], 1, [1, 1], [0, 0], 1, (2, 3)),
            (1, 4, 4, [6, 6], 3, [1, 2], [0, 1], 4, (1, 2)),
            (2, 5, 5, [9, 7], 5, [2, 2], [2, 2], 5, (2, 3)),
        ];
        for (i, (batch, cin, cout, hw, k, stride, padding, groups, (ib, fb))) in
            cases.into_iter().enumerate()
        {
            let case = Case {
                batch,
                cin,
                cout,
                hw,
                k,
                params: Conv2dParams::new(stride, padding, groups).with_fixed_point_input(ib, fb),
                bias: i % 2 == 0,
            };
            check(&case, 300 + i as u64);
        }
    }

    #[test]
    fn untracked_input_and_plain_device() {
        let case = Case {
            batch: 2,
            cin: 4,
            cout: 3,
            hw: [6, 6],
            k: 3,
            params: Conv2dParams::new([1, 1], [1, 1], 1),
            bias: true,
        };
        let inp = inputs(&case, 7);
        let want = run(&case, &inp, false);

        // Only the weight tracked: no input gradient is asked for, the weight's still matches.
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(inp.x.clone(), &device);
        let w = Tensor::<4>::from_data(inp.w.clone(), &device).require_grad();
        let b = Tensor::<1>::from_data(inp.b.clone().expect("bias"), &device);
        let r = Tensor::<4>::from_data(inp.r.clone(), &device);
        let out = conv2d(x.clone(), w.clone(), Some(b), case.params);
        let grads = (out * r).sum().backward();
        assert!(x.grad(&grads).is_none());
        let gw = values(w.grad(&grads).expect("weight gradient"));
        assert_close("grad w, x untracked", &gw, &want.gw, 1e-4);

        // Without autodiff the op runs on flex directly.
        let device = Device::flex();
        let x = Tensor::<4>::from_data(inp.x.clone(), &device);
        assert!(applies(&x));
        let w = Tensor::<4>::from_data(inp.w.clone(), &device);
        let b = Tensor::<1>::from_data(inp.b.clone().expect("bias"), &device);
        let out = values(conv2d(x, w, Some(b), case.params));
        assert_close("forward, no autodiff", &out, &want.out, 1e-5);
    }

    #[test]
    fn non_contiguous_input() {
        // A transposed view: the kernels must read it in logical order.
        let device = Device::flex().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let xt = Tensor::<4>::from_data(random([2, 3, 7, 5], &mut rng), &device);
        let x = xt.swap_dims(2, 3);
        let w = Tensor::<4>::from_data(random([4, 3, 3, 3], &mut rng), &device);
        let params = Conv2dParams::new([2, 1], [1, 0], 1);
        let got = values(conv2d(x.clone(), w.clone(), None, params));
        let want = values(burn_conv2d(x, w, None, params.options()));
        assert_close("forward on a transposed view", &got, &want, 1e-5);
    }

    #[test]
    fn the_comparison_can_fail() {
        // Guards against a vacuous check: a convolution with the wrong stride or a perturbed
        // gradient is rejected.
        let case = Case {
            batch: 2,
            cin: 3,
            cout: 2,
            hw: [6, 6],
            k: 3,
            params: Conv2dParams::new([1, 1], [1, 1], 1),
            bias: false,
        };
        let inp = inputs(&case, 3);
        let want = run(&case, &inp, false);
        let mut gw = run(&case, &inp, true).gw;
        gw[5] += 1e-3 * gw.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(rel_err(&gw, &want.gw) > 1e-4);

        let device = Device::flex();
        let x = Tensor::<4>::from_data(inp.x.clone(), &device);
        let w = Tensor::<4>::from_data(inp.w.clone(), &device);
        let flipped = values(conv2d(x.clone(), w.clone().flip([2, 3]), None, case.params));
        let burn = values(burn_conv2d(x, w, None, case.params.options()));
        assert!(
            rel_err(&flipped, &burn) > 1e-2,
            "a flipped kernel must differ"
        );
    }

    #[test]
    fn gradients_do_not_depend_on_the_thread_count() {
        let case = Case {
            batch: 21,
            cin: 4,
            cout: 5,
            hw: [9, 9],
            k: 3,
            params: Conv2dParams::new([1, 1], [1, 1], 1),
            bias: false,
        };
        let inp = inputs(&case, 21);
        let grads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| {
                let t = |d: &TensorData| FlexTensor::from_data(d.clone());
                let wanted = Wanted {
                    x: true,
                    weight: true,
                    bias: true,
                };
                let g = Flex::conv2d_backward(t(&inp.x), t(&inp.w), t(&inp.r), case.params, wanted);
                [g.x, g.weight, g.bias].map(|g| {
                    g.expect("wanted gradient")
                        .into_data()
                        .try_to_vec::<f32>()
                        .expect("f32 data")
                })
            })
        };
        assert!(grads(1) == grads(3), "bitwise equal for 1 and 3 threads");
    }

    #[test]
    fn valid_ranges() {
        // 7 outputs, input 7, stride 1, pad 1: offset 0 reads padding at o = 0.
        assert_eq!(valid_range(7, 7, 1, 1, 0), (1, 7));
        assert_eq!(valid_range(7, 7, 1, 1, 1), (0, 7));
        assert_eq!(valid_range(7, 7, 1, 1, 2), (0, 6));
        // Stride 2, input 8, pad 1, k 3: 4 outputs; offset 0 -> o*2 - 1 in 0..8 -> o in 1..4.
        assert_eq!(valid_range(4, 8, 2, 1, 0), (1, 4));
        assert_eq!(valid_range(4, 8, 2, 1, 2), (0, 4));
        // Kernel wider than input + pad on that side: nothing valid.
        assert_eq!(valid_range(1, 1, 1, 0, 3), (0, 0));
    }
}
