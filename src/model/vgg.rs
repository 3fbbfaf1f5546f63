//! VGG19 with batch norm, as the authors' fork builds it for CIFAR: stages of conv-BN-ReLU
//! units separated by 2x2 max pools, a global average pool, one linear layer. The stage
//! lengths come from the layer table.

use burn::module::Module;
use burn::nn::pool::MaxPool2d;
use burn::tensor::{Device, Tensor};

use super::conv_bn::ConvBn;
use super::{DenseLayer, Laps, SpecCursor, global_avg_pool};
use crate::arch::LayerKind;

/// Conv units up to and including the max pool that ends the stage (the last stage has none).
#[derive(Module, Debug)]
pub struct VggStage {
    pub convs: Vec<ConvBn>,
    pub pool: Option<MaxPool2d>,
}

#[derive(Module, Debug)]
pub struct Vgg {
    pub stages: Vec<VggStage>,
    pub classifier: DenseLayer,
}

impl Vgg {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let mut stages = Vec::new();
        let mut convs = Vec::new();
        loop {
            match cursor.peek().map(|l| &l.kind) {
                Some(LayerKind::Conv { .. }) => convs.push(ConvBn::init(cursor, device)),
                Some(LayerKind::MaxPool { .. }) => stages.push(VggStage {
                    convs: std::mem::take(&mut convs),
                    pool: Some(cursor.max_pool()),
                }),
                _ => break,
            }
        }
        if !convs.is_empty() {
            stages.push(VggStage { convs, pool: None });
        }
        cursor.global_avg_pool();
        let classifier = cursor.dense(device);
        Self { stages, classifier }
    }

    /// # Shapes
    /// - input `[batch, 3, height, width]`, output `[batch, classes]`.
    pub fn forward_with(&self, mut x: Tensor<4>, laps: &mut impl Laps) -> Tensor<2> {
        for stage in &self.stages {
            for unit in &stage.convs {
                x = unit.forward_with(x, laps);
            }
            if let Some(pool) = &stage.pool {
                x = laps.layer(pool.forward(x));
            }
        }
        let x = laps.layer(global_avg_pool(x));
        laps.layer(self.classifier.forward(x))
    }
}
