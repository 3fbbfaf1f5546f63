//! EfficientNetV2-B0's layer table as the DeepShift fork builds it
//! (`pytorch/cifar10_models/efficientnetv2.py`): a stride-1 3x3 stem of 24 channels, fused
//! MBConv blocks (a 3x3 conv doing expansion and stride together, then a 1x1 projection where
//! the expansion is not 1), then MBConv blocks (1x1 expand, 3x3 depthwise, squeeze-and-excitation
//! of two 1x1 convs with bias on the pooled map, 1x1 projection), SiLU after every batch norm
//! that is not a projection's, an identity residual where a block keeps stride 1 and width,
//! no head conv, global average pooling and a linear layer on the 256 channels.
//!
//! The fork hard-codes 101 classes in its head; here the classes are the data's.

use super::{Activation, Builder};

/// A stage: (fused, expansion, output channels, blocks, stride of the first block), the fork's
/// `efficientnetv2_bo` configuration.
pub const CFG: [(bool, usize, usize, usize, usize); 6] = [
    (true, 1, 24, 2, 1),
    (true, 4, 48, 4, 2),
    (true, 4, 64, 4, 2),
    (false, 4, 128, 6, 2),
    (false, 6, 160, 9, 1),
    (false, 6, 256, 15, 2),
];

/// Channels of the stem conv.
pub const STEM: usize = 24;

/// Squeeze-and-excitation reduction: the middle width is `mid / SE_REDUCTION`.
pub const SE_REDUCTION: usize = 4;

/// One block of the network, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Fused MBConv (3x3 conv) rather than MBConv (1x1 expand + depthwise + SE).
    pub fused: bool,
    pub expansion: usize,
    pub in_planes: usize,
    pub out_planes: usize,
    pub stride: usize,
}

impl Block {
    /// The fork's `use_residual`: stride 1 and the same width in and out.
    pub fn residual(&self) -> bool {
        self.stride == 1 && self.in_planes == self.out_planes
    }
}

/// The 40 blocks of [`CFG`] in forward order.
pub fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut in_planes = STEM;
    for &(fused, expansion, out_planes, n, stride) in &CFG {
        for i in 0..n {
            out.push(Block {
                fused,
                expansion,
                in_planes,
                out_planes,
                stride: if i == 0 { stride } else { 1 },
            });
            in_planes = out_planes;
        }
    }
    out
}

/// Appends the whole network for the builder's input and `num_classes`.
pub(super) fn layers(b: &mut Builder, num_classes: usize) {
    let silu = Activation::Silu;
    b.conv("conv1", STEM, 3, 1, 1, false);
    b.bn("bn1");
    b.activation("act1", silu);
    for (i, block) in blocks().iter().enumerate() {
        let p = format!("layers.{i}");
        let mid = block.in_planes * block.expansion;
        if block.fused {
            b.conv(&format!("{p}.conv"), mid, 3, block.stride, 1, false);
            b.bn(&format!("{p}.bn"));
            b.activation(&format!("{p}.act"), silu);
            if block.expansion != 1 {
                b.conv(&format!("{p}.project"), block.out_planes, 1, 1, 0, false);
                b.bn(&format!("{p}.bn2"));
            }
        } else {
            if block.expansion != 1 {
                b.conv(&format!("{p}.expand_conv"), mid, 1, 1, 0, false);
                b.bn(&format!("{p}.bn0"));
                b.activation(&format!("{p}.act0"), silu);
            }
            b.grouped_conv(&format!("{p}.dwconv"), mid, 3, block.stride, 1, false, mid);
            b.bn(&format!("{p}.bn1"));
            b.activation(&format!("{p}.act1"), silu);
            // The excitation scales the depthwise output; its convs see the pooled map.
            let map = std::mem::replace(&mut b.shape, vec![mid, 1, 1]);
            b.conv(&format!("{p}.se.fc1"), mid / SE_REDUCTION, 1, 1, 0, true);
            b.activation(&format!("{p}.se.act"), silu);
            b.conv(&format!("{p}.se.fc2"), mid, 1, 1, 0, true);
            b.shape = map;
            b.conv(
                &format!("{p}.project_conv"),
                block.out_planes,
                1,
                1,
                0,
                false,
            );
            b.bn(&format!("{p}.bn2"));
        }
    }
    b.global_avg_pool("pool");
    b.linear("linear", num_classes, true);
}

#[cfg(test)]
mod tests {
    use crate::arch::{Activation, Backbone, InputShape, LayerKind, NetSpec};
    use crate::shift::ShiftSettings;

    fn net(side: usize, classes: usize, depth: usize) -> NetSpec {
        NetSpec::build(
            Backbone::Efficientnetv2B0,
            InputShape::new(3, side, side),
            classes,
            ShiftSettings::default(),
            depth,
        )
        .unwrap()
    }

    #[test]
    fn cifar_table_matches_the_forks_pytorch_model() {
        // Counted with PyTorch on the fork's cifar10_models/efficientnetv2.py with the head at
        // 10 classes: 37,837,202 parameters (37,860,589 with its hard-coded 101), 169 convs
        // (30 depthwise), 1 linear, 40 nn.SiLU modules + 61 F.silu calls; FlopCounterMode:
        // 252,578,048 conv + linear MACs per 3x32x32 image.
        let n = net(32, 10, 0);
        assert_eq!(n.conv_counts(), (169, 30));
        let t = n.totals();
        assert_eq!(t.params, 37_837_202);
        assert_eq!(net(32, 101, 0).totals().params, 37_860_589);
        assert_eq!(t.weight_layers, 170);
        assert_eq!(t.float_macs, 252_578_048);
        assert_eq!(n.activation, Activation::Silu);
        let silu = n
            .layers
            .iter()
            .filter(|l| l.kind == LayerKind::Silu)
            .count();
        assert_eq!(silu, 40 + 61);
    }

    #[test]
    fn blocks_follow_the_forks_strides_and_residuals() {
        let blocks = super::blocks();
        assert_eq!(blocks.len(), 40);
        assert_eq!(blocks.iter().filter(|b| b.fused).count(), 10);
        assert!(blocks[0].residual() && !blocks[2].residual());
        let n = net(32, 10, 0);
        let at = |name: &str| n.layers.iter().find(|l| l.name == name).unwrap();
        // The fused stages stride 1, 2, 2 (32 -> 8). The first MBConv: 64 -> 256 expand at
        // 8x8, depthwise stride 2 to 4x4, SE 256 -> 64 on the pooled map.
        assert_eq!(at("layers.10.expand_conv").input, vec![64, 8, 8]);
        assert_eq!(at("layers.10.dwconv").output, vec![256, 4, 4]);
        assert_eq!(at("layers.10.se.fc1").output, vec![64, 1, 1]);
        assert_eq!(at("layers.10.project_conv").input, vec![256, 4, 4]);
        // A fused block of expansion 1 has no projection.
        assert!(n.layers.iter().all(|l| l.name != "layers.0.project"));
        assert_eq!(at("pool").input, vec![256, 2, 2]);
    }

    #[test]
    fn shift_depth_reaches_every_weight_layer_and_relu_is_refused() {
        assert_eq!(net(32, 10, 999).totals().shift_layers, 170);
        assert_eq!(net(32, 10, 999).totals().float_macs, 0);
        let one = net(32, 10, 1);
        let shifted: Vec<&str> = one
            .layers
            .iter()
            .filter(|l| l.shift)
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(shifted, ["linear"]);
        // The fork's num_layers = 79 (convs, from the output; the linear always converts).
        let fork = net(32, 10, 80);
        let first = fork
            .layers
            .iter()
            .find(|l| l.shift)
            .map(|l| l.name.as_str());
        assert_eq!(first, Some("layers.24.dwconv"));
        let relu = NetSpec::build_with(
            Backbone::Efficientnetv2B0,
            InputShape::new(3, 32, 32),
            10,
            ShiftSettings::default(),
            0,
            Activation::Relu,
        );
        assert_eq!(
            relu.map_err(|e| e.to_string()).unwrap_err(),
            "activation = \"relu\" does not apply to efficientnetv2-b0: efficientnetv2-b0 is built with \"silu\""
        );
    }
}
