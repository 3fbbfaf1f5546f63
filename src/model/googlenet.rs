//! GoogLeNet for CIFAR (kuangliu's, as the authors' fork uses it): a 3x3 conv stem, nine
//! Inception modules with a 3x3 stride-2 max pool after the third-stage and fourth-stage ones,
//! a global average pool, one linear layer.

use burn::module::Module;
use burn::nn::pool::MaxPool2d;
use burn::tensor::{Device, Tensor};

use super::conv_bn::ConvBn;
use super::{DenseLayer, Laps, SpecCursor, global_avg_pool};
use crate::arch::LayerKind;

/// Four branches on the same input, concatenated along channels: 1x1; 1x1 then 3x3; 1x1 then
/// two 3x3; a 3x3 stride-1 max pool then 1x1. Built and run in the table's order (branch by
/// branch), so `Laps` sees the rows in table order.
#[derive(Module, Debug)]
pub struct Inception {
    pub b1: ConvBn,
    pub b2: Vec<ConvBn>,
    pub b3: Vec<ConvBn>,
    pub b4_pool: MaxPool2d,
    pub b4: ConvBn,
    /// The stride-2 max pool that follows the module, if any.
    pub pool_after: Option<MaxPool2d>,
}

impl Inception {
    fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let b1 = ConvBn::init(cursor, device);
        let b2 = (0..2).map(|_| ConvBn::init(cursor, device)).collect();
        let b3 = (0..3).map(|_| ConvBn::init(cursor, device)).collect();
        let b4_pool = cursor.max_pool();
        let b4 = ConvBn::init(cursor, device);
        let pool_after = matches!(
            cursor.peek().map(|l| &l.kind),
            Some(LayerKind::MaxPool { .. })
        )
        .then(|| cursor.max_pool());
        Self {
            b1,
            b2,
            b3,
            b4_pool,
            b4,
            pool_after,
        }
    }

    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
        let y1 = self.b1.forward_with(x.clone(), laps);
        let y2 = chain(&self.b2, x.clone(), laps);
        let y3 = chain(&self.b3, x.clone(), laps);
        let y4 = laps.layer(self.b4_pool.forward(x));
        let y4 = self.b4.forward_with(y4, laps);
        let y = laps.other(Tensor::cat(vec![y1, y2, y3, y4], 1));
        match &self.pool_after {
            Some(pool) => laps.layer(pool.forward(y)),
            None => y,
        }
    }
}

/// Conv units one after another.
fn chain(units: &[ConvBn], mut y: Tensor<4>, laps: &mut impl Laps) -> Tensor<4> {
    for unit in units {
        y = unit.forward_with(y, laps);
    }
    y
}

#[derive(Module, Debug)]
pub struct GoogLeNet {
    pub pre: ConvBn,
    pub modules: Vec<Inception>,
    pub linear: DenseLayer,
}

impl GoogLeNet {
    pub(super) fn init(cursor: &mut SpecCursor<'_>, device: &Device) -> Self {
        let pre = ConvBn::init(cursor, device);
        let mut modules = Vec::new();
        while matches!(cursor.peek().map(|l| &l.kind), Some(LayerKind::Conv { .. })) {
            modules.push(Inception::init(cursor, device));
        }
        cursor.global_avg_pool();
        let linear = cursor.dense(device);
        Self {
            pre,
            modules,
            linear,
        }
    }

    /// # Shapes
    /// - input `[batch, 3, height, width]`, output `[batch, classes]`.
    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<2> {
        let mut x = self.pre.forward_with(x, laps);
        for m in &self.modules {
            x = m.forward_with(x, laps);
        }
        let x = laps.layer(global_avg_pool(x));
        laps.layer(self.linear.forward(x))
    }
}
