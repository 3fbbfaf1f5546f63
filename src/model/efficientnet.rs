//! EfficientNet-B0 in the DeepShift fork's CIFAR form: MobileNetV2's inverted residual blocks,
//! each followed by a squeeze-and-excitation (global average, 1x1 conv, ReLU, 1x1 conv,
//! sigmoid) that scales the block output before the shortcut is added, then global average
//! pooling and a linear classifier. The layer table sets every size and stride, and whether
//! the activations are the fork's ReLU or Tan & Le's SiLU (SiLU rows in the table).
//! Training can add drop connect on the residual branches ([`DropConnect`]).

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::batch_norm::batch_norm_auto;
use super::drop_connect::{DropConnect, maybe};
use super::mobilenetv2::InvertedResidual;
use super::{ConvLayer, DenseLayer, Laps, SpecCursor, activate, global_avg_pool};

#[derive(Module, Debug)]
pub struct SeBlock {
    pub body: InvertedResidual,
    /// Squeeze: `out -> out / 16` channels on the pooled map.
    pub fc1: ConvLayer,
    /// Excite: back to `out` channels, then a sigmoid gate per channel.
    pub fc2: ConvLayer,
}

impl SeBlock {
    fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let body = InvertedResidual::init(cursor, device);
        let fc1 = cursor.conv(device);
        cursor.expect_silu(body.silu);
        Self {
            body,
            fc1,
            fc2: cursor.conv(device),
        }
    }

    /// The fork's `out * w + shortcut`, where a strided block's "shortcut" is its own
    /// (unscaled) output. `drop` (training) applies to `out * w` where the block has a real
    /// shortcut (stride 1), as block `index` of `blocks`.
    pub fn forward_drop(
        &self,
        x: Tensor<4>,
        laps: &mut impl Laps,
        drop: Option<&DropConnect>,
        index: usize,
        blocks: usize,
    ) -> Tensor<4> {
        let out = self.body.main_path(x.clone(), laps);
        let shortcut = if self.body.residual {
            self.body.shortcut_path(x, laps)
        } else {
            out.clone()
        };
        let w = laps.other(out.clone().mean_dims(&[2, 3]));
        let w = laps.layer(self.fc1.forward(w));
        let w = activate(w, self.body.silu, laps);
        let w = laps.layer(self.fc2.forward(w));
        let branch = out * sigmoid(w);
        let branch = if self.body.residual {
            maybe(drop, branch, index, blocks)
        } else {
            branch
        };
        laps.other(branch + shortcut)
    }

    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        self.forward_drop(x, laps, None, 0, 1)
    }
}

#[derive(Module, Debug)]
pub struct EfficientNet {
    pub conv1: ConvLayer,
    pub bn1: BatchNorm,
    /// SiLU activations (the table's choice), else ReLU.
    pub silu: bool,
    pub blocks: Vec<SeBlock>,
    pub linear: DenseLayer,
}

impl EfficientNet {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let conv1 = cursor.conv(device);
        let bn1 = cursor.bn(device);
        let silu = cursor.silu();
        let blocks = cursor.depthwise_left();
        let blocks = (0..blocks).map(|_| SeBlock::init(cursor, device)).collect();
        Self {
            conv1,
            bn1,
            silu,
            blocks,
            linear: cursor.dense(device),
        }
    }

    /// # Shapes
    /// - input `[batch, channels, height, width]`, output logits `[batch, classes]`.
    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<2> {
        self.forward_drop(x, laps, None)
    }

    /// The forward pass with drop connect on the residual branches (training only).
    pub fn forward_drop(
        &self,
        x: Tensor<4>,
        laps: &mut impl Laps,
        drop: Option<&DropConnect>,
    ) -> Tensor<2> {
        let x = laps.layer(self.conv1.forward(x));
        let x = laps.layer(batch_norm_auto(&self.bn1, x));
        let mut x = activate(x, self.silu, laps);
        let n = self.blocks.len();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_drop(x, laps, drop, i, n);
        }
        // Global average pooling: the fork's flatten at 32x32 (a 1x1 map), any size here.
        let x = laps.other(global_avg_pool(x));
        laps.layer(self.linear.forward(x))
    }
}
