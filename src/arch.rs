//! Network architectures as plain data: the layer table that `describe`, the op-count energy
//! model and the burn model builder all read, so the three can never disagree about which
//! layer is a shift layer or how many operations it costs.
//!
//! This module has no deep-learning dependency on purpose: the optimizer and the energy model
//! use it in builds without burn.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::shift::ShiftSettings;

mod efficientnet;
pub mod efficientnetv2;
mod mobilenetv2;

/// The backbones dsnn-hpo can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    /// He et al.'s CIFAR ResNets: 3 stages of basic blocks, 16/32/64 channels, option-A
    /// (zero-padded identity) shortcuts; depth = 6n + 2.
    Resnet20,
    Resnet32,
    Resnet44,
    Resnet56,
    /// Two conv blocks and two linear layers, sized for 28x28 grey images but valid for any
    /// input of at least 4x4.
    SmallCnn,
    /// Sandler et al.'s inverted residuals with depthwise convs, in the CIFAR form of the
    /// DeepShift fork (kuangliu's): see [`mobilenetv2`].
    Mobilenetv2,
    /// The fork's CIFAR EfficientNet-B0: inverted residuals with squeeze-and-excitation, see
    /// [`efficientnet`].
    #[serde(rename = "efficientnet-b0")]
    EfficientnetB0,
    /// VGG19 with batch norm as the authors' fork builds it for CIFAR: 16 bias-free 3x3 convs
    /// with batch norm, four 2x2 max pools, average pooling, one linear layer.
    Vgg19,
    /// The CIFAR GoogLeNet of the fork (kuangliu's): a 3x3 stem and nine Inception modules.
    Googlenet,
    /// The fork's EfficientNetV2-B0: fused MBConv stages, then MBConv with
    /// squeeze-and-excitation, SiLU throughout; see [`efficientnetv2`].
    #[serde(rename = "efficientnetv2-b0")]
    Efficientnetv2B0,
}

impl Backbone {
    pub const ALL: [Backbone; 10] = [
        Backbone::Resnet20,
        Backbone::Resnet32,
        Backbone::Resnet44,
        Backbone::Resnet56,
        Backbone::SmallCnn,
        Backbone::Mobilenetv2,
        Backbone::EfficientnetB0,
        Backbone::Vgg19,
        Backbone::Googlenet,
        Backbone::Efficientnetv2B0,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet20 => "resnet20",
            Backbone::Resnet32 => "resnet32",
            Backbone::Resnet44 => "resnet44",
            Backbone::Resnet56 => "resnet56",
            Backbone::SmallCnn => "small-cnn",
            Backbone::Mobilenetv2 => "mobilenetv2",
            Backbone::EfficientnetB0 => "efficientnet-b0",
            Backbone::Vgg19 => "vgg19",
            Backbone::Googlenet => "googlenet",
            Backbone::Efficientnetv2B0 => "efficientnetv2-b0",
        }
    }

    /// The activations the backbone can be built with, its default first: EfficientNet-B0
    /// takes the fork's ReLU or Tan & Le's SiLU; EfficientNetV2-B0 is SiLU as the fork builds
    /// it; the others are ReLU networks.
    pub fn activations(self) -> &'static [Activation] {
        match self {
            Backbone::EfficientnetB0 => &[Activation::Relu, Activation::Silu],
            Backbone::Efficientnetv2B0 => &[Activation::Silu],
            _ => &[Activation::Relu],
        }
    }

    /// Whether the backbone has the residual blocks drop connect applies to.
    pub fn has_drop_connect(self) -> bool {
        matches!(self, Backbone::EfficientnetB0 | Backbone::Efficientnetv2B0)
    }

    /// Basic blocks per stage for the ResNets (depth = 6n + 2).
    pub fn blocks_per_stage(self) -> Option<usize> {
        match self {
            Backbone::Resnet20 => Some(3),
            Backbone::Resnet32 => Some(5),
            Backbone::Resnet44 => Some(7),
            Backbone::Resnet56 => Some(9),
            _ => None,
        }
    }

    /// Smallest input height and width the backbone accepts: VGG19's four 2x2 max pools need
    /// 16 pixels to leave one; the others halve at most twice (4).
    pub fn min_input(self) -> usize {
        match self {
            Backbone::Vgg19 => 16,
            _ => 4,
        }
    }
}

/// The nonlinearity after batch norm in the backbones that offer a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(x, 0): not a row of the table (a sign test, left out of the op-count model).
    #[default]
    Relu,
    /// x * sigmoid(x) (Tan & Le's swish): a row of the table, so the op-count model counts
    /// it (see [`SILU_MACS_PER_ELEMENT`]).
    Silu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn is_relu(a: &Activation) -> bool {
    *a == Activation::Relu
}

/// Float multiply-adds one SiLU costs per element in the op-count model: 4 for exp(-x)
/// (range reduction, then a degree-3 polynomial by Horner: the usual float exp approximation),
/// 1 for the reciprocal of 1 + exp(-x) (the add, the divide costed as a multiply) and 1 for
/// x times the sigmoid (its add is an overcount of one float add).
pub const SILU_MACS_PER_ELEMENT: u64 = 6;

impl fmt::Display for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backbone {
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Backbone::ALL
            .into_iter()
            .find(|b| b.name() == lower || b.name().replace('-', "_") == lower)
            .ok_or_else(|| ArchError::UnknownModel(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArchError {
    #[error(
        "unknown model '{0}': expected one of resnet20, resnet32, resnet44, resnet56, small-cnn, mobilenetv2, efficientnet-b0, vgg19, googlenet, efficientnetv2-b0"
    )]
    UnknownModel(String),
    #[error("activation = \"{activation}\" does not apply to {model}: {model} is built with {}", allowed_activations(*.model))]
    Activation {
        model: Backbone,
        activation: Activation,
    },
    #[error("invalid input shape '{0}': expected CxHxW with positive integers, e.g. 3x32x32")]
    BadInput(String),
    #[error("input {h}x{w} is too small for {model}: it needs at least {min}x{min} pixels")]
    InputTooSmall {
        model: Backbone,
        h: usize,
        w: usize,
        min: usize,
    },
    #[error("num_classes must be at least 2, got {0}")]
    BadClasses(usize),
}

fn allowed_activations(model: Backbone) -> String {
    let names: Vec<String> = model
        .activations()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    names.join(" or ")
}

/// Input tensor shape of one image: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }
}

impl fmt::Display for InputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

impl FromStr for InputShape {
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split(['x', 'X']).collect();
        let bad = || ArchError::BadInput(s.to_string());
        if parts.len() != 3 {
            return Err(bad());
        }
        let mut dims = [0usize; 3];
        for (d, p) in dims.iter_mut().zip(&parts) {
            *d = p.trim().parse().map_err(|_| bad())?;
            if *d == 0 {
                return Err(bad());
            }
        }
        Ok(InputShape::new(dims[0], dims[1], dims[2]))
    }
}

/// What a layer computes. Only `Conv` and `Linear` carry weights that can become shifts;
/// batch norm and pooling are rows so that the op-count energy model counts them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerKind {
    Conv {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        /// Channel groups: each output channel sees `in_channels / groups` inputs (depthwise
        /// when groups = in_channels). Absent in tables stored before grouped convs: 1.
        #[serde(default = "one")]
        groups: usize,
    },
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    BatchNorm {
        features: usize,
    },
    /// Max pooling over square windows (padding never wins the max).
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Average over the whole height and width: (C, H, W) to (C).
    GlobalAvgPool,
    /// SiLU on every element; `macs` = [`SILU_MACS_PER_ELEMENT`] per element.
    Silu,
}

fn one() -> usize {
    1
}

impl LayerKind {
    /// A convolution with more than one group (depthwise or grouped).
    pub fn is_grouped_conv(&self) -> bool {
        matches!(self, LayerKind::Conv { groups, .. } if *groups > 1)
    }

    pub fn short_name(&self) -> &'static str {
        match self {
            LayerKind::Conv { .. } => "conv",
            LayerKind::Linear { .. } => "linear",
            LayerKind::BatchNorm { .. } => "batchnorm",
            LayerKind::MaxPool { .. } => "maxpool",
            LayerKind::GlobalAvgPool => "avgpool",
            LayerKind::Silu => "silu",
        }
    }

    pub fn is_weight_layer(&self) -> bool {
        matches!(self, LayerKind::Conv { .. } | LayerKind::Linear { .. })
    }

    pub fn is_pool(&self) -> bool {
        matches!(self, LayerKind::MaxPool { .. } | LayerKind::GlobalAvgPool)
    }
}

/// One row of the layer table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: LayerKind,
    /// Per-image input shape (C, H, W) or (F) for linear layers.
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    /// True when the weights are powers of two (a shift layer).
    pub shift: bool,
    /// Weights (conv kernels / linear matrix) without the bias.
    pub weights: u64,
    pub biases: u64,
    /// Multiply-accumulates per image: float MACs for float layers, shift-adds for shift
    /// layers; for batch norm, one multiply-add per element (scale and shift at inference); for
    /// pooling, one float compare (max) or add (average) per window element of each output, the
    /// padded ones included, with no multiply (the average's 1/window scale is left out: at
    /// inference it folds into the next linear layer).
    pub macs: u64,
}

impl LayerSpec {
    pub fn params(&self) -> u64 {
        self.weights + self.biases
    }
}

/// A whole network: the table plus what it was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetSpec {
    pub model: Backbone,
    pub input: InputShape,
    pub num_classes: usize,
    /// Absent in tables stored before the choice existed (and for ReLU): ReLU.
    #[serde(default, skip_serializing_if = "is_relu")]
    pub activation: Activation,
    pub shift: ShiftSettings,
    /// The requested depth; `shift_layers` is what it amounts to for this network.
    pub shift_depth: usize,
    pub layers: Vec<LayerSpec>,
}

/// Totals of a layer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub params: u64,
    /// Scalars the optimizer trains: DeepShift-PS keeps a shift and a sign per weight.
    pub trainable: u64,
    pub weight_layers: usize,
    pub shift_layers: usize,
    pub float_macs: u64,
    pub shift_adds: u64,
    /// Batch-norm multiply-adds (float, outside the weight layers).
    pub norm_ops: u64,
    /// Pooling compares and adds (float, no multiply); absent in records written before
    /// pooling had rows.
    #[serde(default)]
    pub pool_ops: u64,
    /// SiLU multiply-adds (float, outside the weight layers); absent in records written
    /// before SiLU had rows.
    #[serde(default)]
    pub activation_ops: u64,
    pub bias_adds: u64,
}

impl NetSpec {
    /// Convolutions in the table, and how many of them are grouped: what the reference
    /// implementations' counts are stated in.
    #[cfg(test)]
    pub(crate) fn conv_counts(&self) -> (usize, usize) {
        let convs = self
            .layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKind::Conv { .. }));
        let grouped = convs.clone().filter(|l| l.kind.is_grouped_conv()).count();
        (convs.count(), grouped)
    }

    /// Builds the layer table of `model` with its default activation (see
    /// [`NetSpec::build_with`]).
    pub fn build(
        model: Backbone,
        input: InputShape,
        num_classes: usize,
        shift: ShiftSettings,
        shift_depth: usize,
    ) -> Result<NetSpec, ArchError> {
        let activation = model.activations()[0];
        Self::build_with(model, input, num_classes, shift, shift_depth, activation)
    }

    /// Builds the layer table of `model` for `input` and `num_classes` with `activation`
    /// (one of [`Backbone::activations`]), converting the last `shift_depth` weight layers
    /// (counted from the output end) to shift layers.
    pub fn build_with(
        model: Backbone,
        input: InputShape,
        num_classes: usize,
        shift: ShiftSettings,
        shift_depth: usize,
        activation: Activation,
    ) -> Result<NetSpec, ArchError> {
        if !model.activations().contains(&activation) {
            return Err(ArchError::Activation { model, activation });
        }
        if num_classes < 2 {
            return Err(ArchError::BadClasses(num_classes));
        }
        // The ResNets and the small CNN halve the resolution twice; MobileNetV2's and
        // EfficientNet-B0's 3x3 convs (padding 1) and global pool take any size; VGG19 pools
        // four times.
        let min = model.min_input();
        if input.height < min || input.width < min {
            return Err(ArchError::InputTooSmall {
                model,
                h: input.height,
                w: input.width,
                min,
            });
        }
        let mut b = Builder::new(input);
        match (model, model.blocks_per_stage()) {
            (Backbone::Vgg19, _) => vgg19(&mut b, num_classes),
            (Backbone::Googlenet, _) => googlenet(&mut b, num_classes),
            (_, Some(n)) => {
                b.conv("conv1", 16, 3, 1, 1, false);
                b.bn("bn1");
                for (stage, width) in [16usize, 32, 64].into_iter().enumerate() {
                    for block in 0..n {
                        let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                        let p = format!("layer{}.{}", stage + 1, block);
                        b.conv(&format!("{p}.conv1"), width, 3, stride, 1, false);
                        b.bn(&format!("{p}.bn1"));
                        b.conv(&format!("{p}.conv2"), width, 3, 1, 1, false);
                        b.bn(&format!("{p}.bn2"));
                    }
                }
                b.global_pool();
                b.linear("fc", num_classes, true);
            }
            (Backbone::Mobilenetv2, _) => mobilenetv2::layers(&mut b, num_classes),
            (Backbone::EfficientnetB0, _) => efficientnet::layers(&mut b, num_classes, activation),
            (Backbone::Efficientnetv2B0, _) => efficientnetv2::layers(&mut b, num_classes),
            (_, None) => {
                b.conv("conv1", 16, 3, 1, 1, false);
                b.bn("bn1");
                b.max_pool2();
                b.conv("conv2", 32, 3, 1, 1, false);
                b.bn("bn2");
                b.max_pool2();
                b.flatten();
                b.linear("fc1", SMALL_CNN_HIDDEN, true);
                b.linear("fc2", num_classes, true);
            }
        }
        let mut layers = b.layers;
        let weight_layers = layers.iter().filter(|l| l.kind.is_weight_layer()).count();
        let first_shift = weight_layers.saturating_sub(shift_depth);
        for (i, layer) in layers
            .iter_mut()
            .filter(|l| l.kind.is_weight_layer())
            .enumerate()
        {
            layer.shift = i >= first_shift;
        }
        Ok(NetSpec {
            model,
            input,
            num_classes,
            activation,
            shift,
            shift_depth,
            layers,
        })
    }

    /// Which weight layers (in input-to-output order) are shift layers.
    pub fn shift_mask(&self) -> Vec<bool> {
        self.layers
            .iter()
            .filter(|l| l.kind.is_weight_layer())
            .map(|l| l.shift)
            .collect()
    }

    /// Weight memory in bits: shift layers' weights at `weight_bits`; float weights, biases and
    /// batch norm at 32 bits.
    pub fn weight_memory_bits(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| {
                let bits = if l.shift { self.shift.weight_bits } else { 32 };
                l.weights * u64::from(bits) + 32 * l.biases
            })
            .sum()
    }

    /// Per-layer operation counts for the op-count energy model. Batch norm counts as a float
    /// layer of one multiply-add per element whose "weights" are its scale and shift; pooling
    /// as float adds only (its compares and adds, see [`LayerSpec::macs`]), with no weights.
    pub fn layer_counts(&self) -> Vec<crate::energy::LayerCount> {
        let elems = |d: &[usize]| d.iter().map(|&x| x as u64).product::<u64>();
        self.layers
            .iter()
            .map(|l| crate::energy::LayerCount {
                name: l.name.clone(),
                shift: l.shift,
                weight_bits: if l.shift { self.shift.weight_bits } else { 32 },
                // SiLU's multiply-adds are float MACs (see SILU_MACS_PER_ELEMENT).
                macs: if l.kind.is_pool() { 0 } else { l.macs },
                float_adds: if l.kind.is_pool() { l.macs } else { 0 },
                params: l.weights + if l.shift { 0 } else { l.biases },
                bias_adds: if l.biases > 0 && l.kind.is_weight_layer() {
                    elems(&l.output)
                } else {
                    0
                },
                input_elems: elems(&l.input),
                output_elems: elems(&l.output),
            })
            .collect()
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            params: 0,
            trainable: 0,
            weight_layers: 0,
            shift_layers: 0,
            float_macs: 0,
            shift_adds: 0,
            norm_ops: 0,
            pool_ops: 0,
            activation_ops: 0,
            bias_adds: 0,
        };
        for l in &self.layers {
            t.params += l.params();
            let ps = l.shift && self.shift.kind == crate::shift::ShiftKind::Ps;
            t.trainable += if ps { 2 * l.weights } else { l.weights } + l.biases;
            match l.kind {
                LayerKind::BatchNorm { .. } => t.norm_ops += l.macs,
                LayerKind::MaxPool { .. } | LayerKind::GlobalAvgPool => t.pool_ops += l.macs,
                LayerKind::Silu => t.activation_ops += l.macs,
                LayerKind::Conv { .. } | LayerKind::Linear { .. } => {
                    t.weight_layers += 1;
                    let out: u64 = l.output.iter().map(|&d| d as u64).product();
                    if l.biases > 0 {
                        t.bias_adds += out;
                    }
                    if l.shift {
                        t.shift_layers += 1;
                        t.shift_adds += l.macs;
                    } else {
                        t.float_macs += l.macs;
                    }
                }
            }
        }
        t
    }
}

/// Hidden width of the small CNN's first linear layer.
pub const SMALL_CNN_HIDDEN: usize = 64;

/// VGG19's feature layers: conv widths, 0 = a 2x2 max pool. Four pools, not kuangliu's five:
/// the fork's `cifar10_models/vgg.py` ends on a 2x2 map that an average pool reduces.
const VGG19_CFG: [usize; 20] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512,
];

/// VGG19 with batch norm: bias-free 3x3 convs, BN, ReLU; the fork's final `AvgPool2d(2)` (a 2x2
/// map at 32x32) is a global average pool here, so larger inputs keep the 512-feature linear.
fn vgg19(b: &mut Builder, num_classes: usize) {
    let (mut conv, mut pool) = (0, 0);
    for width in VGG19_CFG {
        if width == 0 {
            pool += 1;
            b.max_pool(&format!("pool{pool}"), 2, 2, 0);
        } else {
            conv += 1;
            b.conv(&format!("conv{conv}"), width, 3, 1, 1, false);
            b.bn(&format!("bn{conv}"));
        }
    }
    b.global_avg_pool("avgpool");
    b.linear("classifier", num_classes, true);
}

/// An Inception module's widths: 1x1; 3x3 reduce, 3x3; "5x5" reduce, 5x5 (two 3x3 convs in
/// kuangliu's version); pool projection.
type InceptionWidths = (usize, usize, usize, usize, usize, usize);

/// GoogLeNet's Inception modules in order, each with whether a 3x3 stride-2 max pool follows.
const GOOGLENET_MODULES: [(&str, InceptionWidths, bool); 9] = [
    ("a3", (64, 96, 128, 16, 32, 32), false),
    ("b3", (128, 128, 192, 32, 96, 64), true),
    ("a4", (192, 96, 208, 16, 48, 64), false),
    ("b4", (160, 112, 224, 24, 64, 64), false),
    ("c4", (128, 128, 256, 24, 64, 64), false),
    ("d4", (112, 144, 288, 32, 64, 64), false),
    ("e4", (256, 160, 320, 32, 128, 128), true),
    ("a5", (256, 160, 320, 32, 128, 128), false),
    ("b5", (384, 192, 384, 48, 128, 128), false),
];

/// GoogLeNet: every conv has a bias and is followed by BN and ReLU. The rows of one Inception
/// module are its four branches in turn (the fork's registration order, which is also the
/// order its `convert_to_shift` walks backwards), each starting from the module's input; the
/// branches' outputs are concatenated along channels. The fork's `AvgPool2d(8)` (an 8x8 map at
/// 32x32) is a global average pool here.
fn googlenet(b: &mut Builder, num_classes: usize) {
    b.conv("pre.conv", 192, 3, 1, 1, true);
    b.bn("pre.bn");
    let mut pools = 0;
    for (name, (n1, r3, n3, r5, n5, np), pool_after) in GOOGLENET_MODULES {
        let input = b.shape.clone();
        let mut outs = Vec::with_capacity(4);
        b.conv(&format!("{name}.b1.conv"), n1, 1, 1, 0, true);
        b.bn(&format!("{name}.b1.bn"));
        outs.push(std::mem::replace(&mut b.shape, input.clone()));
        b.conv(&format!("{name}.b2.conv1"), r3, 1, 1, 0, true);
        b.bn(&format!("{name}.b2.bn1"));
        b.conv(&format!("{name}.b2.conv2"), n3, 3, 1, 1, true);
        b.bn(&format!("{name}.b2.bn2"));
        outs.push(std::mem::replace(&mut b.shape, input.clone()));
        b.conv(&format!("{name}.b3.conv1"), r5, 1, 1, 0, true);
        b.bn(&format!("{name}.b3.bn1"));
        b.conv(&format!("{name}.b3.conv2"), n5, 3, 1, 1, true);
        b.bn(&format!("{name}.b3.bn2"));
        b.conv(&format!("{name}.b3.conv3"), n5, 3, 1, 1, true);
        b.bn(&format!("{name}.b3.bn3"));
        outs.push(std::mem::replace(&mut b.shape, input));
        b.max_pool(&format!("{name}.b4.pool"), 3, 1, 1);
        b.conv(&format!("{name}.b4.conv"), np, 1, 1, 0, true);
        b.bn(&format!("{name}.b4.bn"));
        outs.push(b.shape.clone());
        b.concat(&outs);
        if pool_after {
            pools += 1;
            b.max_pool(&format!("maxpool{pools}"), 3, 2, 1);
        }
    }
    b.global_avg_pool("avgpool");
    b.linear("linear", num_classes, true);
}

/// Tracks the running activation shape while layers are appended.
struct Builder {
    shape: Vec<usize>,
    layers: Vec<LayerSpec>,
}

impl Builder {
    fn new(input: InputShape) -> Self {
        Self {
            shape: vec![input.channels, input.height, input.width],
            layers: Vec::new(),
        }
    }

    fn conv(&mut self, name: &str, out: usize, k: usize, stride: usize, pad: usize, bias: bool) {
        self.grouped_conv(name, out, k, stride, pad, bias, 1);
    }

    /// A conv of `groups` channel groups: weights and MACs are per group, so a depthwise
    /// conv costs `out * k * k` weights, not `out * in * k * k`.
    #[allow(clippy::too_many_arguments)]
    fn grouped_conv(
        &mut self,
        name: &str,
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        groups: usize,
    ) {
        let (c, h, w) = (self.shape[0], self.shape[1], self.shape[2]);
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        let weights = (out * (c / groups) * k * k) as u64;
        let macs = weights * (oh * ow) as u64;
        self.layers.push(LayerSpec {
            name: name.to_string(),
            kind: LayerKind::Conv {
                in_channels: c,
                out_channels: out,
                kernel: k,
                stride,
                padding: pad,
                bias,
                groups,
            },
            input: self.shape.clone(),
            output: vec![out, oh, ow],
            shift: false,
            weights,
            biases: if bias { out as u64 } else { 0 },
            macs,
        });
        self.shape = vec![out, oh, ow];
    }

    fn bn(&mut self, name: &str) {
        let elems: u64 = self.shape.iter().map(|&d| d as u64).product();
        let c = self.shape[0];
        self.layers.push(LayerSpec {
            name: name.to_string(),
            kind: LayerKind::BatchNorm { features: c },
            input: self.shape.clone(),
            output: self.shape.clone(),
            shift: false,
            weights: c as u64,
            biases: c as u64,
            macs: elems,
        });
    }

    /// A max-pool row: `kernel * kernel` compares per output element.
    fn max_pool(&mut self, name: &str, kernel: usize, stride: usize, pad: usize) {
        let (c, h, w) = (self.shape[0], self.shape[1], self.shape[2]);
        let oh = (h + 2 * pad - kernel) / stride + 1;
        let ow = (w + 2 * pad - kernel) / stride + 1;
        self.layers.push(LayerSpec {
            name: name.to_string(),
            kind: LayerKind::MaxPool {
                kernel,
                stride,
                padding: pad,
            },
            input: self.shape.clone(),
            output: vec![c, oh, ow],
            shift: false,
            weights: 0,
            biases: 0,
            macs: (kernel * kernel * c * oh * ow) as u64,
        });
        self.shape = vec![c, oh, ow];
    }

    /// A global-average-pool row: one add per input element.
    fn global_avg_pool(&mut self, name: &str) {
        let c = self.shape[0];
        self.layers.push(LayerSpec {
            name: name.to_string(),
            kind: LayerKind::GlobalAvgPool,
            input: self.shape.clone(),
            output: vec![c],
            shift: false,
            weights: 0,
            biases: 0,
            macs: self.shape.iter().map(|&d| d as u64).product(),
        });
        self.shape = vec![c];
    }

    /// A SiLU row on the current shape.
    fn silu(&mut self, name: &str) {
        let elems: u64 = self.shape.iter().map(|&d| d as u64).product();
        self.layers.push(LayerSpec {
            name: name.to_string(),
            kind: LayerKind::Silu,
            input: self.shape.clone(),
            output: self.shape.clone(),
            shift: false,
            weights: 0,
            biases: 0,
            macs: SILU_MACS_PER_ELEMENT * elems,
        });
    }

    /// A SiLU row where `activation` is SiLU; ReLU has no row.
    fn activation(&mut self, name: &str, activation: Activation) {
        if activation == Activation::Silu {
            self.silu(name);
        }
    }

    /// Joins branch outputs (same height and width) along channels; no row, since a
    /// concatenation computes nothing (each branch writes into its slice of the output).
    fn concat(&mut self, branches: &[Vec<usize>]) {
        let channels = branches.iter().map(|s| s[0]).sum();
        self.shape = vec![channels, self.shape[1], self.shape[2]];
    }

    fn max_pool2(&mut self) {
        self.shape = vec![self.shape[0], self.shape[1] / 2, self.shape[2] / 2];
    }

    fn global_pool(&mut self) {
        self.shape = vec![self.shape[0]];
    }

    fn flatten(&mut self) {
        self.shape = vec![self.shape.iter().product()];
    }

    fn linear(&mut self, name: &str, out: usize, bias: bool) {
        let inp = self.shape[0];
        let weights = (inp * out) as u64;
        self.layers.push(LayerSpec {
            name: name.to_string(),
            kind: LayerKind::Linear {
                in_features: inp,
                out_features: out,
                bias,
            },
            input: vec![inp],
            output: vec![out],
            shift: false,
            weights,
            biases: if bias { out as u64 } else { 0 },
            macs: weights,
        });
        self.shape = vec![out];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resnet20(depth: usize) -> NetSpec {
        NetSpec::build(
            Backbone::Resnet20,
            InputShape::new(3, 32, 32),
            10,
            ShiftSettings::default(),
            depth,
        )
        .unwrap()
    }

    #[test]
    fn resnet20_has_19_convs_and_one_linear_and_about_027m_params() {
        let net = resnet20(0);
        let convs = net
            .layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKind::Conv { .. }))
            .count();
        let linears = net
            .layers
            .iter()
            .filter(|l| matches!(l.kind, LayerKind::Linear { .. }))
            .count();
        assert_eq!((convs, linears), (19, 1));
        // The count of the reference option-A PyTorch ResNet20 (BN included); option B's
        // projection shortcuts would add 2,752 more (272,474).
        assert_eq!(net.totals().params, 269_722);
    }

    #[test]
    fn shift_depth_counts_weight_layers_from_the_output() {
        assert_eq!(resnet20(0).totals().shift_layers, 0);
        let one = resnet20(1);
        assert_eq!(one.shift_mask().iter().filter(|&&s| s).count(), 1);
        assert!(
            *one.shift_mask().last().unwrap(),
            "depth 1 converts the fc layer"
        );
        let six = resnet20(6);
        let mask = six.shift_mask();
        assert_eq!(mask.iter().filter(|&&s| s).count(), 6);
        assert!(mask[14..].iter().all(|&s| s) && mask[..14].iter().all(|&s| !s));
        assert_eq!(resnet20(20).totals().shift_layers, 20);
        assert_eq!(resnet20(500).totals().shift_layers, 20);
    }

    #[test]
    fn resnet20_macs_by_hand() {
        // conv1: 16*3*9 weights at 32x32 = 442,368 MACs; fc: 640.
        let net = resnet20(0);
        assert_eq!(net.layers[0].macs, 16 * 3 * 9 * 32 * 32);
        let fc = net.layers.last().unwrap();
        assert_eq!((fc.weights, fc.biases, fc.macs), (640, 10, 640));
        // Stage 1: 6 convs of 16*16*9 at 32x32; stage 2: one 32*16*9 + five 32*32*9 at 16x16;
        // stage 3: one 64*32*9 + five 64*64*9 at 8x8.
        let expected: u64 = 16 * 3 * 9 * 1024
            + 6 * 16 * 16 * 9 * 1024
            + (32 * 16 * 9 + 5 * 32 * 32 * 9) * 256
            + (64 * 32 * 9 + 5 * 64 * 64 * 9) * 64
            + 640;
        let t = net.totals();
        assert_eq!(t.float_macs, expected);
        assert_eq!(t.shift_adds, 0);
        let all = resnet20(20).totals();
        assert_eq!((all.float_macs, all.shift_adds), (0, expected));
    }

    #[test]
    fn ps_doubles_trainable_weights_of_shift_layers() {
        let s = ShiftSettings {
            kind: crate::shift::ShiftKind::Ps,
            ..Default::default()
        };
        let net = NetSpec::build(Backbone::SmallCnn, InputShape::new(1, 28, 28), 10, s, 1).unwrap();
        let t = net.totals();
        let fc2 = net.layers.last().unwrap();
        assert_eq!(t.trainable, t.params + fc2.weights);
    }

    #[test]
    fn parse_errors_are_specific() {
        assert_eq!(
            "resnet21".parse::<Backbone>(),
            Err(ArchError::UnknownModel("resnet21".into()))
        );
        assert!("3x32".parse::<InputShape>().is_err());
        assert!("3x0x32".parse::<InputShape>().is_err());
        assert_eq!(
            "1x28x28".parse::<InputShape>().unwrap(),
            InputShape::new(1, 28, 28)
        );
        let small = NetSpec::build(
            Backbone::Resnet20,
            InputShape::new(3, 2, 2),
            10,
            ShiftSettings::default(),
            0,
        );
        assert!(matches!(small, Err(ArchError::InputTooSmall { .. })));
    }

    fn build(model: Backbone, input: InputShape, depth: usize) -> NetSpec {
        NetSpec::build(model, input, 10, ShiftSettings::default(), depth).unwrap()
    }

    fn count(net: &NetSpec, f: impl Fn(&LayerKind) -> bool) -> usize {
        net.layers.iter().filter(|l| f(&l.kind)).count()
    }

    fn is_conv(k: &LayerKind) -> bool {
        matches!(k, LayerKind::Conv { .. })
    }

    fn is_linear(k: &LayerKind) -> bool {
        matches!(k, LayerKind::Linear { .. })
    }

    #[test]
    fn vgg19_matches_the_forks_parameter_and_layer_counts() {
        // PyTorch, the fork's cifar10_models/vgg.py vgg19(): 20,035,018 parameters.
        let net = build(Backbone::Vgg19, InputShape::new(3, 32, 32), 0);
        assert_eq!((count(&net, is_conv), count(&net, is_linear)), (16, 1));
        assert_eq!(net.totals().params, 20_035_018);
        assert_eq!(count(&net, LayerKind::is_pool), 5);
        // Four 2x2 pools take 32x32 to 2x2; the global average leaves 512 features.
        let avg = &net.layers[net.layers.len() - 2];
        assert_eq!(
            (avg.input.clone(), avg.output.clone()),
            (vec![512, 2, 2], vec![512])
        );
        assert!(
            net.layers
                .iter()
                .all(|l| l.biases == 0 || !is_conv(&l.kind))
        );
    }

    #[test]
    fn googlenet_matches_the_forks_parameter_and_layer_counts() {
        // PyTorch, the fork's cifar10_models/googlenet.py: 6,166,250 parameters.
        let net = build(Backbone::Googlenet, InputShape::new(3, 32, 32), 0);
        assert_eq!((count(&net, is_conv), count(&net, is_linear)), (64, 1));
        assert_eq!(net.totals().params, 6_166_250);
        // 9 branch pools, the two stride-2 pools, the global average.
        assert_eq!(count(&net, LayerKind::is_pool), 12);
        let find = |name: &str| net.layers.iter().find(|l| l.name == name).unwrap();
        // Each branch starts from the module's input; the concatenation sums channels.
        assert_eq!(find("a3.b4.pool").input, vec![192, 32, 32]);
        assert_eq!(find("b3.b1.conv").input, vec![256, 32, 32]);
        assert_eq!(find("maxpool1").output, vec![480, 16, 16]);
        assert_eq!(find("a5.b1.conv").input, vec![832, 8, 8]);
        assert_eq!(find("avgpool").input, vec![1024, 8, 8]);
    }

    #[test]
    fn googlenet_depth_23_is_the_forks_shift_depth_22() {
        // The fork's convert_to_shift walks modules backwards (an Inception's branches b4, b3,
        // b2, b1) and always converts the linear layer: its 22 = the linear + 22 convs here.
        let net = build(Backbone::Googlenet, InputShape::new(3, 32, 32), 23);
        let shifted: Vec<&str> = net
            .layers
            .iter()
            .filter(|l| l.shift)
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(shifted.len(), 23);
        assert_eq!(shifted[0], "d4.b4.conv");
        assert!(
            shifted[1..22]
                .iter()
                .all(|n| n.starts_with("e4.") || n.starts_with("a5.") || n.starts_with("b5."))
        );
        assert_eq!(shifted[22], "linear");
        assert_eq!(
            build(Backbone::Googlenet, InputShape::new(3, 32, 32), 999)
                .totals()
                .shift_layers,
            65
        );
        assert_eq!(
            build(Backbone::Vgg19, InputShape::new(3, 32, 32), 999)
                .totals()
                .shift_layers,
            17
        );
    }

    #[test]
    fn pooling_rows_count_one_float_op_per_window_element() {
        let net = build(Backbone::Vgg19, InputShape::new(3, 32, 32), 17);
        let pool1 = net.layers.iter().find(|l| l.name == "pool1").unwrap();
        assert_eq!(pool1.macs, 2 * 2 * 64 * 16 * 16);
        assert!(!pool1.shift && pool1.params() == 0);
        let counts = net.layer_counts();
        let i = net.layers.iter().position(|l| l.name == "avgpool").unwrap();
        let c = &counts[i];
        assert_eq!(
            (c.macs, c.float_adds, c.params, c.bias_adds),
            (0, 512 * 2 * 2, 0, 0)
        );
        // Pooling stays float and out of the weight layers however deep the shift goes.
        let t = net.totals();
        assert_eq!(t.weight_layers, 17);
        assert_eq!(
            t.pool_ops,
            4 * (64 * 256 + 128 * 64 + 256 * 16 + 512 * 4) + 2048
        );
        assert_eq!(t.float_macs, 0);
        // GoogLeNet's 3x3 stride-1 branch pool counts its padded window elements.
        let g = build(Backbone::Googlenet, InputShape::new(3, 32, 32), 0);
        let p = g.layers.iter().find(|l| l.name == "a3.b4.pool").unwrap();
        assert_eq!(p.macs, 9 * 192 * 32 * 32);
    }

    #[test]
    fn larger_inputs_keep_the_parameter_count_and_small_ones_are_rejected() {
        for (model, params) in [
            (Backbone::Vgg19, 20_035_018),
            (Backbone::Googlenet, 6_166_250),
        ] {
            for hw in [64, 224] {
                let net = build(model, InputShape::new(3, hw, hw), 0);
                assert_eq!(net.totals().params, params, "{model} at {hw}");
            }
        }
        // Caltech101's 101 classes at 224x224: only the linear layer grows (512 x 101 + 101).
        let caltech = NetSpec::build(
            Backbone::Vgg19,
            InputShape::new(3, 224, 224),
            101,
            ShiftSettings::default(),
            0,
        )
        .unwrap();
        assert_eq!(caltech.totals().params, 20_081_701);
        let small = NetSpec::build(
            Backbone::Vgg19,
            InputShape::new(3, 15, 32),
            10,
            ShiftSettings::default(),
            0,
        );
        assert_eq!(
            small,
            Err(ArchError::InputTooSmall {
                model: Backbone::Vgg19,
                h: 15,
                w: 32,
                min: 16
            })
        );
        assert_eq!("VGG19".parse::<Backbone>(), Ok(Backbone::Vgg19));
        assert_eq!("googlenet".parse::<Backbone>(), Ok(Backbone::Googlenet));
    }
}
