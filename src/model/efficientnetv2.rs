//! EfficientNetV2-B0 as the DeepShift fork builds it (`cifar10_models/efficientnetv2.py`):
//! a 3x3 stem, fused MBConv blocks, MBConv blocks with squeeze-and-excitation, SiLU after
//! every batch norm but the projections', global average pooling and a linear classifier.
//! The block list is [`crate::arch::efficientnetv2::blocks`], the sizes come from the layer
//! table. Training can add drop connect on the identity-residual branches ([`DropConnect`]).

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use super::batch_norm::batch_norm_auto;
use super::drop_connect::{DropConnect, maybe};
use super::{ConvLayer, DenseLayer, Laps, SpecCursor, activate, global_avg_pool};
use crate::arch::efficientnetv2::{Block, blocks};

/// A conv and its batch norm.
#[derive(Module, Debug)]
pub struct ConvNorm {
    pub conv: ConvLayer,
    pub bn: BatchNorm,
}

impl ConvNorm {
    fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        Self {
            conv: cursor.conv(device),
            bn: cursor.bn(device),
        }
    }

    fn forward(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        let x = laps.layer(self.conv.forward(x));
        laps.layer(batch_norm_auto(&self.bn, x))
    }
}

/// Fused MBConv: a 3x3 conv (expansion and stride), batch norm, SiLU, then a 1x1 projection
/// with batch norm where the expansion is not 1.
#[derive(Module, Debug)]
pub struct FusedMbConv {
    pub conv: ConvNorm,
    pub project: Option<ConvNorm>,
}

/// MBConv: 1x1 expand (where the expansion is not 1), 3x3 depthwise, squeeze-and-excitation
/// (pool, 1x1 conv, SiLU, 1x1 conv, sigmoid) scaling the depthwise output, 1x1 projection.
#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<ConvNorm>,
    pub dw: ConvNorm,
    pub se_fc1: ConvLayer,
    pub se_fc2: ConvLayer,
    pub project: ConvNorm,
}

/// One block; 40 per network, so the variants' size gap is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum V2Block {
    Fused(FusedMbConv),
    Mb(MbConv),
}

impl V2Block {
    fn init(block: &Block, cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        if block.fused {
            let conv = ConvNorm::init(cursor, device);
            cursor.expect_silu(true);
            let project = (block.expansion != 1).then(|| ConvNorm::init(cursor, device));
            V2Block::Fused(FusedMbConv { conv, project })
        } else {
            let expand = (block.expansion != 1).then(|| {
                let e = ConvNorm::init(cursor, device);
                cursor.expect_silu(true);
                e
            });
            let dw = ConvNorm::init(cursor, device);
            cursor.expect_silu(true);
            let se_fc1 = cursor.conv(device);
            cursor.expect_silu(true);
            let se_fc2 = cursor.conv(device);
            let project = ConvNorm::init(cursor, device);
            V2Block::Mb(MbConv {
                expand,
                dw,
                se_fc1,
                se_fc2,
                project,
            })
        }
    }

    /// The block's output before the residual add.
    fn branch(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        match self {
            V2Block::Fused(b) => {
                let out = activate(b.conv.forward(x, laps), true, laps);
                match &b.project {
                    Some(p) => p.forward(out, laps),
                    None => out,
                }
            }
            V2Block::Mb(b) => {
                let out = match &b.expand {
                    Some(e) => activate(e.forward(x, laps), true, laps),
                    None => x,
                };
                let out = activate(b.dw.forward(out, laps), true, laps);
                let w = laps.other(out.clone().mean_dims(&[2, 3]));
                let w = laps.layer(b.se_fc1.forward(w));
                let w = activate(w, true, laps);
                let w = laps.layer(b.se_fc2.forward(w));
                let out = laps.other(out * sigmoid(w));
                b.project.forward(out, laps)
            }
        }
    }
}

#[derive(Module, Debug)]
pub struct EfficientNetV2 {
    pub stem: ConvNorm,
    pub blocks: Vec<V2Block>,
    /// Whether each block adds its input (stride 1, same width), in block order.
    pub residual: Vec<bool>,
    pub linear: DenseLayer,
}

impl EfficientNetV2 {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let stem = ConvNorm::init(cursor, device);
        cursor.expect_silu(true);
        let list = blocks();
        let built = list
            .iter()
            .map(|b| V2Block::init(b, cursor, device))
            .collect();
        cursor.global_avg_pool();
        Self {
            stem,
            blocks: built,
            residual: list.iter().map(Block::residual).collect(),
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
        let mut x = activate(self.stem.forward(x, laps), true, laps);
        let n = self.blocks.len();
        for (i, (block, &residual)) in self.blocks.iter().zip(&self.residual).enumerate() {
            let out = block.branch(x.clone(), laps);
            x = if residual {
                laps.other(maybe(drop, out, i, n) + x)
            } else {
                out
            };
        }
        let x = laps.layer(global_avg_pool(x));
        laps.layer(self.linear.forward(x))
    }
}
