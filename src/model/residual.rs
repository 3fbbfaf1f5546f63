//! The join of a residual block, `relu(a + b)`, as one fused op on burn's CPU backend (`flex`).
//!
//! burn 0.22.1's flex runs element-wise ops on one thread below 4M elements (every activation
//! of ResNet20 at batch 128), so the add, the ReLU and the ReLU's backward each cost a serial
//! pass over the block's output while the other cores wait. Here the forward is one parallel
//! pass and the backward another, which hands the masked gradient to both inputs. A backend
//! extension like [`cpu_conv`](crate::shift::cpu_conv); elsewhere it is burn's `relu(a + b)`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Tensor, TensorData, activation};

use crate::par_buffer::par_written;
use crate::shift::cpu_conv;
use std::mem::MaybeUninit;

/// What `Autodiff<B>` needs from a backend to differentiate the fused op. Only `Flex` has it.
pub trait ResidualKernels: Backend {
    /// `relu(a + b)` for tensors of one shape.
    fn add_relu_forward(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of either input from the output gradient `grad` and the output `out`.
    fn add_relu_backward(out: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The op as seen from `Dispatch`.
#[backend_extension(Flex, Autodiff)]
pub trait FusedAddRelu: Backend {
    fn fused_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `relu(a + b)`, fused where it applies and the fused CPU path is enabled (the switch of
/// [`cpu_conv::enabled`]), burn's ops elsewhere.
pub fn add_relu<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    if !(cpu_conv::applies(&a) && cpu_conv::enabled()) || a.dims() != b.dims() {
        return activation::relu(a + b);
    }
    Tensor::from_dispatch(<Dispatch as FusedAddRelu>::fused_add_relu(
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

impl FusedAddRelu for Flex {
    fn fused_add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        Self::add_relu_forward(a, b)
    }
}

/// Backward step; state: the output, whose sign is the gradient's mask.
#[derive(Debug)]
struct AddReluStep;

impl<B: ResidualKernels> Backward<B, 2> for AddReluStep {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [a_node, b_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let masked = B::add_relu_backward(ops.state, grad);
        match (a_node, b_node) {
            (Some(a), Some(b)) => {
                grads.register::<B>(a.id, masked.clone());
                grads.register::<B>(b.id, masked);
            }
            (Some(n), None) | (None, Some(n)) => grads.register::<B>(n.id, masked),
            (None, None) => {}
        }
    }
}

impl<B: ResidualKernels, C: CheckpointStrategy> FusedAddRelu for Autodiff<B, C> {
    fn fused_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        match AddReluStep
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::add_relu_forward(a.into_primitive(), b.into_primitive());
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::add_relu_forward(a.into_primitive(), b.into_primitive()))
            }
        }
    }
}

/// Elements per parallel task: big enough that a task is not all overhead.
const CHUNK: usize = 16 * 1024;

impl ResidualKernels for Flex {
    fn add_relu_forward(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let shape = a.shape();
        assert_eq!(shape, b.shape(), "add_relu: the inputs' shapes differ");
        let (a, b) = (f32s(&a), f32s(&b));
        let out = map_chunks(a.len(), |at, out| {
            for ((o, &x), &y) in out.iter_mut().zip(&a[at.clone()]).zip(&b[at]) {
                // burn's ReLU: 0 where `v <= 0`, so a NaN passes.
                let v = x + y;
                o.write(if v <= 0.0 { 0.0 } else { v });
            }
        });
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn add_relu_backward(out: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (out, grad) = (out.to_contiguous(), grad.to_contiguous());
        let shape = out.shape();
        assert_eq!(shape, grad.shape(), "add_relu backward: gradient shape");
        let (o, g) = (f32s(&out), f32s(&grad));
        let dx = map_chunks(o.len(), |at, dx| {
            for ((d, &o), &g) in dx.iter_mut().zip(&o[at.clone()]).zip(&g[at]) {
                d.write(if o <= 0.0 { 0.0 } else { g });
            }
        });
        FlexTensor::from_data(TensorData::new(dx, shape))
    }
}

/// A `len`-float buffer whose chunks `f(range, chunk)` write in parallel, every element.
fn map_chunks(
    len: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let chunks = len.div_ceil(CHUNK);
    // SAFETY: `f` writes its range; the last chunk's elements past `len` are written here, then
    // cut off.
    let mut out = unsafe {
        par_written(CHUNK, chunks, 1, |i, chunk| {
            let at = i * CHUNK..((i + 1) * CHUNK).min(len);
            let (head, tail) = chunk.split_at_mut(at.len());
            f(at, head);
            tail.fill(MaybeUninit::new(0.0));
        })
    };
    out.truncate(len);
    out
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the fused add-relu takes contiguous f32 tensors (see `cpu_conv::applies`)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 data")
    }

    fn with_fused<R>(on: bool, f: impl FnOnce() -> R) -> R {
        let before = cpu_conv::enabled();
        cpu_conv::set_enabled(on);
        let r = f();
        cpu_conv::set_enabled(before);
        r
    }

    /// Output and both inputs' gradients of `sum(relu(a + b) * r)`.
    fn run(fused: bool, a: &Tensor<4>, b: &Tensor<4>, r: &Tensor<4>) -> [Vec<f32>; 3] {
        let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
        let out = with_fused(fused, || add_relu(a.clone(), b.clone()));
        let g = (out.clone() * r.clone()).sum().backward();
        [
            values(out),
            values(a.grad(&g).expect("a gradient")),
            values(b.grad(&g).expect("b gradient")),
        ]
    }

    #[test]
    fn matches_burns_relu_of_the_sum() {
        let device = Device::flex().autodiff();
        device.seed(3);
        // Two shapes: one chunk with a tail, several chunks.
        for shape in [[2, 3, 5, 7], [4, 16, 32, 32]] {
            let t = || Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let (a, b, r) = (t(), t(), t());
            let got = run(true, &a, &b, &r);
            let want = run(false, &a, &b, &r);
            for (name, g, w) in [("output", 0, 0), ("a", 1, 1), ("b", 2, 2)] {
                assert!(got[g] == want[w], "{name} {shape:?}: not burn's bits");
            }
            let clipped = got[0].iter().filter(|&&v| v == 0.0).count();
            assert!(clipped > got[0].len() / 4 && clipped < got[0].len() * 3 / 4);
        }
    }

    #[test]
    fn a_nan_passes_as_in_burn() {
        let device = Device::flex();
        let a = Tensor::<1>::from_floats([f32::NAN, -1.0, 2.0], &device);
        let b = Tensor::<1>::from_floats([1.0, 0.5, -3.0], &device);
        let got = values(with_fused(true, || add_relu(a.clone(), b.clone())));
        assert!(got[0].is_nan());
        assert_eq!(&got[1..], &[0.0, 0.0]);
    }
}
