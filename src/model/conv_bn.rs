//! Conv, batch norm, ReLU: the unit VGG and GoogLeNet are made of.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::{Device, Tensor};

use super::batch_norm::batch_norm_relu_auto;
use super::{ConvLayer, Laps, SpecCursor};

#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: ConvLayer,
    pub bn: BatchNorm,
}

impl ConvBn {
    /// Takes the cursor's next two rows: a conv and its batch norm.
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        Self {
            conv: cursor.conv(device),
            bn: cursor.bn(device),
        }
    }

    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        let x = laps.layer(self.conv.forward(x));
        laps.layer(batch_norm_relu_auto(&self.bn, x))
    }
}
