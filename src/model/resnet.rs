//! CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of basic blocks at 16/32/64 channels,
//! option-A shortcuts (subsample, then zero-pad the new channels), global average pooling.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::{Device, Tensor};

use super::batch_norm::{batch_norm_auto, batch_norm_relu_auto};
use super::residual::add_relu;
use super::{ConvLayer, DenseLayer, Laps, SpecCursor, global_avg_pool};
use crate::arch::LayerKind;

#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: ConvLayer,
    pub bn1: BatchNorm,
    pub conv2: ConvLayer,
    pub bn2: BatchNorm,
    /// Channels the option-A shortcut pads with zeros on each side (0 = plain identity).
    pub pad_channels: usize,
    /// Takes every other pixel when the block halves the resolution (kernel 1, stride 2).
    pub subsample: Option<MaxPool2d>,
}

impl BasicBlock {
    fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let (cin, cout, stride) = match cursor.peek().map(|l| &l.kind) {
            Some(LayerKind::Conv {
                in_channels,
                out_channels,
                stride,
                ..
            }) => (*in_channels, *out_channels, *stride),
            _ => (0, 0, 1),
        };
        let conv1 = cursor.conv(device);
        let bn1 = cursor.bn(device);
        let conv2 = cursor.conv(device);
        let bn2 = cursor.bn(device);
        Self {
            conv1,
            bn1,
            conv2,
            bn2,
            pad_channels: cout.saturating_sub(cin) / 2,
            subsample: (stride > 1).then(|| {
                MaxPool2dConfig::new([1, 1])
                    .with_strides([stride, stride])
                    .init()
            }),
        }
    }

    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        let out = laps.layer(self.conv1.forward(x.clone()));
        let out = laps.layer(batch_norm_relu_auto(&self.bn1, out));
        let out = laps.layer(self.conv2.forward(out));
        let out = laps.layer(batch_norm_auto(&self.bn2, out));
        let mut shortcut = match &self.subsample {
            Some(pool) => pool.forward(x),
            None => x,
        };
        if self.pad_channels > 0 {
            let [b, _, h, w] = shortcut.dims();
            let zeros = Tensor::<4>::zeros([b, self.pad_channels, h, w], &shortcut.device());
            shortcut = Tensor::cat(vec![zeros.clone(), shortcut, zeros], 1);
        }
        laps.other(add_relu(out, shortcut))
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: ConvLayer,
    pub bn1: BatchNorm,
    pub blocks: Vec<BasicBlock>,
    pub fc: DenseLayer,
}

impl ResNet {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let conv1 = cursor.conv(device);
        let bn1 = cursor.bn(device);
        // 19 convs + fc for ResNet20: the stem, then pairs of convs until only the fc is left.
        let convs_left = cursor
            .layers
            .clone()
            .filter(|l| l.kind.short_name() == "conv")
            .count();
        let blocks = (0..convs_left / 2)
            .map(|_| BasicBlock::init(cursor, device))
            .collect();
        let fc = cursor.dense(device);
        Self {
            conv1,
            bn1,
            blocks,
            fc,
        }
    }

    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<2> {
        let x = laps.layer(self.conv1.forward(x));
        let mut x = laps.layer(batch_norm_relu_auto(&self.bn1, x));
        for block in &self.blocks {
            x = block.forward_with(x, laps);
        }
        // Global average pooling over H and W.
        let x = laps.other(global_avg_pool(x));
        laps.layer(self.fc.forward(x))
    }
}
