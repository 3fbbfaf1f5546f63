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
}

impl Backbone {
    pub const ALL: [Backbone; 7] = [
        Backbone::Resnet20,
        Backbone::Resnet32,
        Backbone::Resnet44,
        Backbone::Resnet56,
        Backbone::SmallCnn,
        Backbone::Mobilenetv2,
        Backbone::EfficientnetB0,
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
        }
    }

    /// Basic blocks per stage for the ResNets (depth = 6n + 2).
    pub fn blocks_per_stage(self) -> Option<usize> {
        match self {
            Backbone::Resnet20 => Some(3),
            Backbone::Resnet32 => Some(5),
            Backbone::Resnet44 => Some(7),
            Backbone::Resnet56 => Some(9),
            Backbone::SmallCnn | Backbone::Mobilenetv2 | Backbone::EfficientnetB0 => None,
        }
    }
}

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
        "unknown model '{0}': expected one of resnet20, resnet32, resnet44, resnet56, small-cnn, mobilenetv2, efficientnet-b0"
    )]
    UnknownModel(String),
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

/// What a layer computes. Only `Conv` and `Linear` carry weights that can become shifts.
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
}

fn one() -> usize {
    1
}

impl LayerKind {
    pub fn short_name(&self) -> &'static str {
        match self {
            LayerKind::Conv { .. } => "conv",
            LayerKind::Linear { .. } => "linear",
            LayerKind::BatchNorm { .. } => "batchnorm",
        }
    }

    pub fn is_weight_layer(&self) -> bool {
        !matches!(self, LayerKind::BatchNorm { .. })
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
    /// layers; for batch norm, one multiply-add per element (scale and shift at inference).
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
    pub bias_adds: u64,
}

impl NetSpec {
    /// Builds the layer table of `model` for `input` and `num_classes`, converting the last
    /// `shift_depth` weight layers (counted from the output end) to shift layers.
    pub fn build(
        model: Backbone,
        input: InputShape,
        num_classes: usize,
        shift: ShiftSettings,
        shift_depth: usize,
    ) -> Result<NetSpec, ArchError> {
        if num_classes < 2 {
            return Err(ArchError::BadClasses(num_classes));
        }
        // The ResNets and the small CNN halve the resolution twice; MobileNetV2's 3x3 convs
        // (padding 1) and global pool take any size, as do EfficientNet-B0's.
        if input.height < 4 || input.width < 4 {
            return Err(ArchError::InputTooSmall {
                model,
                h: input.height,
                w: input.width,
                min: 4,
            });
        }
        let mut b = Builder::new(input);
        match model.blocks_per_stage() {
            Some(n) => {
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
            None if model == Backbone::Mobilenetv2 => mobilenetv2::layers(&mut b, num_classes),
            None if model == Backbone::EfficientnetB0 => efficientnet::layers(&mut b, num_classes),
            None => {
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
    /// layer of one multiply-add per element whose "weights" are its scale and shift.
    pub fn layer_counts(&self) -> Vec<crate::energy::LayerCount> {
        let elems = |d: &[usize]| d.iter().map(|&x| x as u64).product::<u64>();
        self.layers
            .iter()
            .map(|l| crate::energy::LayerCount {
                name: l.name.clone(),
                shift: l.shift,
                weight_bits: if l.shift { self.shift.weight_bits } else { 32 },
                macs: l.macs,
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
            bias_adds: 0,
        };
        for l in &self.layers {
            t.params += l.params();
            let ps = l.shift && self.shift.kind == crate::shift::ShiftKind::Ps;
            t.trainable += if ps { 2 * l.weights } else { l.weights } + l.biases;
            match l.kind {
                LayerKind::BatchNorm { .. } => t.norm_ops += l.macs,
                _ => {
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
}
