//! EfficientNet-B0's layer table as the DeepShift fork builds it for CIFAR-10
//! (`pytorch/cifar10_models/efficientnet.py`, kuangliu's early version): MobileNetV2's
//! inverted residual blocks (ReLU, a 1x1 expand conv even at expansion 1, a 1x1 conv +
//! batch norm shortcut where a stride-1 block changes the width) followed by a
//! squeeze-and-excitation of two 1x1 convs with bias on the globally pooled output
//! (`out / 16` channels between them), no head conv, and a linear layer on the 320 channels.
//!
//! With `activation = "silu"` (Tan & Le's EfficientNet-B0 activation) every ReLU of the
//! network, the squeeze-and-excitation's included, is a SiLU, each a row of the table; the
//! structure stays the fork's.
//!
//! The fork flattens the last map, which is 1x1 only at 32x32 input (its Caltech101 copy fails
//! at 224x224 for that reason); a global average pool is the same at 32x32 and takes any size.

use super::mobilenetv2::inverted_residual;
use super::{Activation, Builder};

/// (expansion, output channels, blocks, stride of the first block), the fork's B0.
pub const CFG: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 2),
    (6, 24, 2, 1),
    (6, 40, 2, 2),
    (6, 80, 3, 2),
    (6, 112, 3, 1),
    (6, 192, 4, 2),
    (6, 320, 1, 2),
];

/// Squeeze-and-excitation reduction: the middle width is `out / SE_REDUCTION`.
pub const SE_REDUCTION: usize = 16;

/// Appends the whole network for the builder's input and `num_classes`.
pub(super) fn layers(b: &mut Builder, num_classes: usize, activation: Activation) {
    b.conv("conv1", 32, 3, 1, 1, false);
    b.bn("bn1");
    b.activation("act1", activation);
    let mut in_planes = 32;
    let mut index = 0;
    for &(expansion, out, blocks, stride) in &CFG {
        for block in 0..blocks {
            let stride = if block == 0 { stride } else { 1 };
            let p = format!("layers.{index}");
            inverted_residual(b, &p, in_planes, out, expansion, stride, activation);
            squeeze_excitation(b, &p, activation);
            in_planes = out;
            index += 1;
        }
    }
    b.global_pool();
    b.linear("linear", num_classes, true);
}

/// Two 1x1 convs with bias on the pooled block output (a 1x1 map); the block's output shape
/// is unchanged, since their result only scales it.
fn squeeze_excitation(b: &mut Builder, p: &str, activation: Activation) {
    let output = b.shape.clone();
    let c = output[0];
    b.shape = vec![c, 1, 1];
    b.conv(
        &format!("{p}.fc1"),
        (c / SE_REDUCTION).max(1),
        1,
        1,
        0,
        true,
    );
    b.activation(&format!("{p}.se_act"), activation);
    b.conv(&format!("{p}.fc2"), c, 1, 1, 0, true);
    b.shape = output;
}

#[cfg(test)]
mod tests {
    use crate::arch::{Backbone, InputShape, LayerKind, NetSpec};
    use crate::shift::ShiftSettings;

    fn net(side: usize, depth: usize) -> NetSpec {
        NetSpec::build(
            Backbone::EfficientnetB0,
            InputShape::new(3, side, side),
            10,
            ShiftSettings::default(),
            depth,
        )
        .unwrap()
    }

    #[test]
    fn cifar_table_matches_the_forks_pytorch_model() {
        // Counted with PyTorch on the fork's cifar10_models/efficientnet.py: 2,912,089
        // parameters, 83 convs (16 depthwise), 1 linear; FlopCounterMode: 26,977,792 conv +
        // linear MACs per 3x32x32 image.
        let n = net(32, 0);
        assert_eq!(n.conv_counts(), (83, 16));
        let t = n.totals();
        assert_eq!(t.params, 2_912_089);
        assert_eq!(t.weight_layers, 84);
        assert_eq!(t.float_macs, 26_977_792);
    }

    #[test]
    fn squeeze_excitation_convs_see_the_pooled_map_and_keep_the_block_shape() {
        let n = net(32, 0);
        let at = |name: &str| n.layers.iter().find(|l| l.name == name).unwrap();
        // Block 3 (80 channels out, at 4x4): 80 -> 5 -> 80 on a 1x1 map, with bias.
        let (fc1, fc2) = (at("layers.5.fc1"), at("layers.5.fc2"));
        assert_eq!(
            (fc1.input.clone(), fc1.output.clone()),
            (vec![80, 1, 1], vec![5, 1, 1])
        );
        assert_eq!((fc2.weights, fc2.biases, fc2.macs), (400, 80, 400));
        let next = &n.layers[n
            .layers
            .iter()
            .position(|l| l.name == "layers.6.conv1")
            .unwrap()];
        assert_eq!(next.input, vec![80, 4, 4]);
    }

    #[test]
    fn larger_inputs_keep_the_parameters() {
        // The fork's flatten would need a 7x7x320 classifier at 224x224; the pool does not.
        let big = net(224, 0);
        assert_eq!(big.totals().params, 2_912_089);
        assert_eq!(big.layers.last().map(|l| l.input.clone()), Some(vec![320]));
        let last = big
            .layers
            .iter()
            .find(|l| l.name == "layers.15.bn3")
            .unwrap();
        assert_eq!(last.output, vec![320, 7, 7]);
    }

    #[test]
    fn silu_adds_counted_rows_and_keeps_the_weights() {
        use crate::arch::{Activation, ArchError, SILU_MACS_PER_ELEMENT};
        let silu = NetSpec::build_with(
            Backbone::EfficientnetB0,
            InputShape::new(3, 32, 32),
            10,
            ShiftSettings::default(),
            84,
            Activation::Silu,
        )
        .unwrap();
        let relu = net(32, 84);
        let (ts, tr) = (silu.totals(), relu.totals());
        assert_eq!((ts.params, ts.weight_layers), (tr.params, tr.weight_layers));
        assert_eq!(ts.shift_layers, 84, "SiLU rows are never shift layers");
        assert_eq!(tr.activation_ops, 0);
        // The stem, two per block and one in each squeeze-and-excitation: 1 + 16 * 3.
        let rows: Vec<_> = silu
            .layers
            .iter()
            .filter(|l| l.kind == LayerKind::Silu)
            .collect();
        assert_eq!(rows.len(), 49);
        assert_eq!(rows[0].name, "act1");
        assert_eq!(rows[0].macs, SILU_MACS_PER_ELEMENT * 32 * 32 * 32);
        let se = rows.iter().find(|l| l.name == "layers.5.se_act").unwrap();
        assert_eq!(se.input, vec![5, 1, 1]);
        assert_eq!(ts.activation_ops, rows.iter().map(|l| l.macs).sum::<u64>());
        // The op-count model sees them as float multiply-adds without weights.
        let i = silu.layers.iter().position(|l| l.name == "act1").unwrap();
        let c = &silu.layer_counts()[i];
        assert_eq!((c.macs, c.params, c.shift), (6 * 32 * 32 * 32, 0, false));
        let bad = NetSpec::build_with(
            Backbone::Resnet20,
            InputShape::new(3, 32, 32),
            10,
            ShiftSettings::default(),
            0,
            Activation::Silu,
        );
        assert_eq!(
            bad.as_ref().map_err(|e| e.to_string()).unwrap_err(),
            "activation = \"silu\" does not apply to resnet20: resnet20 is built with \"relu\""
        );
        assert!(matches!(bad, Err(ArchError::Activation { .. })));
    }
}
