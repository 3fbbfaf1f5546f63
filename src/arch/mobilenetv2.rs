//! MobileNetV2's layer table as the DeepShift fork builds it for CIFAR-10
//! (`pytorch/cifar10_models/mobilenetv2.py`, kuangliu's variant): ReLU, a stride-1 stem,
//! inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project), a 1x1 conv + batch norm
//! shortcut where a stride-1 block changes the width, no residual where a block strides.
//!
//! Inputs of at least [`IMAGENET_STRIDES_FROM`] pixels on both sides take the strides of the
//! fork's Caltech101 model instead (stride 2 in the stem and in the 24-channel stage), so a
//! 224x224 image ends at 7x7 rather than 28x28 (49 times the work of the fork's runs).

use super::{Activation, Builder};

/// (expansion, output channels, blocks, stride of the first block), CIFAR strides.
pub const CFG: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Smallest side (pixels) at which the stem and the 24-channel stage stride 2, as in the
/// fork's Caltech101 (224x224) model; CIFAR (32) and Tiny ImageNet (64) keep stride 1.
pub const IMAGENET_STRIDES_FROM: usize = 128;

/// Channels of the 1x1 conv before the pool.
const HEAD: usize = 1280;

/// Appends the whole network for the builder's input and `num_classes`.
pub(super) fn layers(b: &mut Builder, num_classes: usize) {
    let large = b.shape[1].min(b.shape[2]) >= IMAGENET_STRIDES_FROM;
    b.conv("conv1", 32, 3, if large { 2 } else { 1 }, 1, false);
    b.bn("bn1");
    let mut in_planes = 32;
    let mut index = 0;
    for (stage, &(expansion, out, blocks, stride)) in CFG.iter().enumerate() {
        let stride = if large && stage == 1 { 2 } else { stride };
        for block in 0..blocks {
            let stride = if block == 0 { stride } else { 1 };
            inverted_residual(
                b,
                &format!("layers.{index}"),
                in_planes,
                out,
                expansion,
                stride,
                Activation::Relu,
            );
            in_planes = out;
            index += 1;
        }
    }
    b.conv("conv2", HEAD, 1, 1, 0, false);
    b.bn("bn2");
    b.global_pool();
    b.linear("linear", num_classes, true);
}

/// One block, in forward order: expand, depthwise, project, then the shortcut conv (if any)
/// on the block's input. EfficientNet-B0's blocks start the same way, with a SiLU row after
/// the first two batch norms where `activation` is SiLU.
pub(super) fn inverted_residual(
    b: &mut Builder,
    p: &str,
    in_planes: usize,
    out: usize,
    expansion: usize,
    stride: usize,
    activation: Activation,
) {
    let input = b.shape.clone();
    let planes = expansion * in_planes;
    b.conv(&format!("{p}.conv1"), planes, 1, 1, 0, false);
    b.bn(&format!("{p}.bn1"));
    b.activation(&format!("{p}.act1"), activation);
    b.grouped_conv(&format!("{p}.conv2"), planes, 3, stride, 1, false, planes);
    b.bn(&format!("{p}.bn2"));
    b.activation(&format!("{p}.act2"), activation);
    b.conv(&format!("{p}.conv3"), out, 1, 1, 0, false);
    b.bn(&format!("{p}.bn3"));
    if stride == 1 && in_planes != out {
        let output = std::mem::replace(&mut b.shape, input);
        b.conv(&format!("{p}.shortcut.0"), out, 1, 1, 0, false);
        b.bn(&format!("{p}.shortcut.1"));
        debug_assert_eq!(b.shape, output);
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::{Backbone, InputShape, LayerKind, NetSpec};
    use crate::shift::ShiftSettings;

    fn net(side: usize, classes: usize, depth: usize) -> NetSpec {
        NetSpec::build(
            Backbone::Mobilenetv2,
            InputShape::new(3, side, side),
            classes,
            ShiftSettings::default(),
            depth,
        )
        .unwrap()
    }

    /// (convs, depthwise convs, linears).
    fn counts(net: &NetSpec) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for l in &net.layers {
            match l.kind {
                LayerKind::Conv { groups, .. } => {
                    c.0 += 1;
                    c.1 += usize::from(groups > 1);
                }
                LayerKind::Linear { .. } => c.2 += 1,
                _ => {}
            }
        }
        c
    }

    #[test]
    fn cifar_table_matches_the_forks_pytorch_model() {
        // Counted with PyTorch on the fork's cifar10_models/mobilenetv2.py: 2,296,922
        // parameters, 57 convs (17 depthwise), 1 linear; torch's FlopCounterMode gives
        // 91,154,944 conv + linear MACs per 3x32x32 image.
        let n = net(32, 10, 0);
        assert_eq!(counts(&n), (57, 17, 1));
        let t = n.totals();
        assert_eq!(t.params, 2_296_922);
        assert_eq!(t.weight_layers, 58);
        assert_eq!(t.float_macs, 91_154_944);
        assert_eq!(n.layers.last().map(|l| l.input.clone()), Some(vec![1280]));
    }

    #[test]
    fn depthwise_convs_count_one_input_channel_per_filter() {
        let n = net(32, 10, 0);
        let dw = n.layers.iter().find(|l| l.kind.is_grouped_conv()).unwrap();
        // The first block's depthwise conv: 32 channels, 3x3, at 32x32.
        assert_eq!(dw.name, "layers.0.conv2");
        assert_eq!((dw.weights, dw.macs), (32 * 9, 32 * 9 * 32 * 32));
        // The op-count energy model reads the same numbers.
        let i = n.layers.iter().position(|l| l.name == dw.name).unwrap();
        let count = &n.layer_counts()[i];
        assert_eq!((count.macs, count.params), (32 * 9 * 1024, 32 * 9));
    }

    #[test]
    fn larger_inputs_keep_the_classifier_and_take_the_caltech_strides() {
        // Tiny ImageNet size: CIFAR strides, an 8x8 map before the pool, same parameters.
        let tiny = net(64, 10, 0);
        assert_eq!(tiny.totals().params, 2_296_922);
        assert_eq!(tiny.totals().float_macs, 4 * (91_154_944 - 12_800) + 12_800);
        // 224x224: the fork's caltech101 model without its 3 shortcut convs that never run
        // (19,120 of its 2,432,181 parameters); torch counts 322,604,160 MACs for it.
        let big = net(224, 101, 0);
        assert_eq!(counts(&big), (56, 17, 1));
        assert_eq!(big.totals().params, 2_432_181 - 19_120);
        assert_eq!(big.totals().float_macs, 322_604_160);
        assert_eq!(big.layers[0].output, vec![32, 112, 112]);
    }

    #[test]
    fn shift_depth_reaches_every_weight_layer_depthwise_included() {
        let all = net(32, 10, 58);
        assert_eq!(all.totals().shift_layers, 58);
        assert_eq!(all.totals().float_macs, 0);
        let three = net(32, 10, 3);
        // From the output: the linear, conv2 (320->1280), then the last block's shortcut.
        let shifted: Vec<&str> = three
            .layers
            .iter()
            .filter(|l| l.shift)
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(shifted, ["layers.16.shortcut.0", "conv2", "linear"]);
    }

    #[test]
    fn stored_conv_rows_without_groups_read_as_ungrouped() {
        let row = r#"{"name":"conv1","kind":"conv","in_channels":3,"out_channels":16,
            "kernel":3,"stride":1,"padding":1,"bias":false,"input":[3,32,32],
            "output":[16,32,32],"shift":false,"weights":432,"biases":0,"macs":442368}"#;
        let spec: crate::arch::LayerSpec = serde_json::from_str(row).unwrap();
        assert!(matches!(spec.kind, LayerKind::Conv { groups: 1, .. }));
    }
}
