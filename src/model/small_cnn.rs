//! A small CNN for 28x28 grey images (MNIST-like): two conv blocks with 2x2 max pooling, then
//! two linear layers. Input size and class count come from the spec.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::batch_norm::batch_norm_relu_auto;
use super::{ConvLayer, DenseLayer, Laps, SpecCursor};

#[derive(Module, Debug)]
pub struct SmallCnn {
    pub conv1: ConvLayer,
    pub bn1: BatchNorm,
    pub conv2: ConvLayer,
    pub bn2: BatchNorm,
    pub pool: MaxPool2d,
    pub fc1: DenseLayer,
    pub fc2: DenseLayer,
}

impl SmallCnn {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        Self {
            conv1: cursor.conv(device),
            bn1: cursor.bn(device),
            conv2: cursor.conv(device),
            bn2: cursor.bn(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: cursor.dense(device),
            fc2: cursor.dense(device),
        }
    }

    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<2> {
        let x = laps.layer(self.conv1.forward(x));
        let x = laps.layer(batch_norm_relu_auto(&self.bn1, x));
        let x = laps.other(self.pool.forward(x));
        let x = laps.layer(self.conv2.forward(x));
        let x = laps.layer(batch_norm_relu_auto(&self.bn2, x));
        let x = laps.other(self.pool.forward(x));
        let [b, c, h, w] = x.dims();
        let x = x.reshape([b, c * h * w]);
        let x = laps.layer(self.fc1.forward(x));
        let x = laps.other(relu(x));
        laps.layer(self.fc2.forward(x))
    }
}
