//! MobileNetV2 (Sandler et al. 2018) in the DeepShift fork's CIFAR form: inverted residual
//! blocks of a 1x1 expand, a 3x3 depthwise and a 1x1 linear projection, each followed by
//! batch norm (ReLU after the first two), a residual add where the block keeps the resolution
//! (through a 1x1 conv + batch norm where it changes the width), a 1x1 conv to 1280 channels,
//! global average pooling and a linear classifier. The layer table sets every size and stride.

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::{Device, Tensor};

use super::batch_norm::{batch_norm_auto, batch_norm_relu_auto};
use super::{ConvLayer, DenseLayer, Laps, SpecCursor, activate, global_avg_pool};
use crate::arch::{LayerKind, LayerSpec};

/// The conv fields the block structure depends on.
fn conv_fields(spec: Option<&LayerSpec>) -> (usize, usize, usize, usize) {
    match spec.map(|l| &l.kind) {
        Some(LayerKind::Conv {
            in_channels,
            out_channels,
            stride,
            groups,
            ..
        }) => (*in_channels, *out_channels, *stride, *groups),
        _ => (0, 0, 1, 1),
    }
}

/// A 1x1 conv and its batch norm on the block's input, where the residual changes the width.
#[derive(Module, Debug)]
pub struct Shortcut {
    pub conv: ConvLayer,
    pub bn: BatchNorm,
}

#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub conv1: ConvLayer,
    pub bn1: BatchNorm,
    /// Depthwise: one 3x3 filter per channel.
    pub conv2: ConvLayer,
    pub bn2: BatchNorm,
    pub conv3: ConvLayer,
    pub bn3: BatchNorm,
    /// Whether the block input is added to its output (stride 1).
    pub residual: bool,
    /// SiLU after the first two batch norms (the table has SiLU rows there), else ReLU.
    pub silu: bool,
    pub shortcut: Option<Shortcut>,
}

impl InvertedResidual {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let (in_planes, _, _, _) = conv_fields(cursor.peek());
        let conv1 = cursor.conv(device);
        let bn1 = cursor.bn(device);
        let silu = cursor.silu();
        let (_, _, stride, _) = conv_fields(cursor.peek());
        let conv2 = cursor.conv(device);
        let bn2 = cursor.bn(device);
        cursor.expect_silu(silu);
        let (_, out_planes, _, _) = conv_fields(cursor.peek());
        let conv3 = cursor.conv(device);
        let bn3 = cursor.bn(device);
        // The table's rule (arch/mobilenetv2.rs): residual at stride 1, through a conv when
        // the width changes.
        let residual = stride == 1;
        let shortcut = (residual && in_planes != out_planes).then(|| Shortcut {
            conv: cursor.conv(device),
            bn: cursor.bn(device),
        });
        Self {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            residual,
            silu,
            shortcut,
        }
    }

    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        let out = self.main_path(x.clone(), laps);
        if !self.residual {
            return out;
        }
        let shortcut = self.shortcut_path(x, laps);
        laps.other(out + shortcut)
    }

    /// Expand, depthwise, project, with their batch norms.
    pub fn main_path(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        let out = laps.layer(self.conv1.forward(x));
        let out = laps.layer(batch_norm_auto(&self.bn1, out));
        let out = activate(out, self.silu, laps);
        let out = laps.layer(self.conv2.forward(out));
        let out = laps.layer(batch_norm_auto(&self.bn2, out));
        let out = activate(out, self.silu, laps);
        let out = laps.layer(self.conv3.forward(out));
        laps.layer(batch_norm_auto(&self.bn3, out))
    }

    /// The block input, through the shortcut conv where there is one.
    pub fn shortcut_path(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        match &self.shortcut {
            Some(s) => {
                let y = laps.layer(s.conv.forward(x));
                laps.layer(batch_norm_auto(&s.bn, y))
            }
            None => x,
        }
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub conv1: ConvLayer,
    pub bn1: BatchNorm,
    pub blocks: Vec<InvertedResidual>,
    pub conv2: ConvLayer,
    pub bn2: BatchNorm,
    pub linear: DenseLayer,
}

impl MobileNetV2 {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let conv1 = cursor.conv(device);
        let bn1 = cursor.bn(device);
        let blocks = cursor.depthwise_left();
        let blocks = (0..blocks)
            .map(|_| InvertedResidual::init(cursor, device))
            .collect();
        Self {
            conv1,
            bn1,
            blocks,
            conv2: cursor.conv(device),
            bn2: cursor.bn(device),
            linear: cursor.dense(device),
        }
    }

    /// # Shapes
    /// - input `[batch, channels, height, width]`, output logits `[batch, classes]`.
    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<2> {
        let x = laps.layer(self.conv1.forward(x));
        let mut x = laps.layer(batch_norm_relu_auto(&self.bn1, x));
        for block in &self.blocks {
            x = block.forward_with(x, laps);
        }
        let x = laps.layer(self.conv2.forward(x));
        let x = laps.layer(batch_norm_relu_auto(&self.bn2, x));
        // Global average pooling: any input size gives the same classifier.
        let x = laps.other(global_avg_pool(x));
        laps.layer(self.linear.forward(x))
    }
}
