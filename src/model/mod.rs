//! The burn networks, built from an [`arch::NetSpec`](crate::arch::NetSpec) so that the layer
//! table `describe` prints is exactly the network that trains.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::arch::{Backbone, LayerKind, LayerSpec, NetSpec};
use crate::shift::ShiftSettings;
use crate::shift::layer::{ShiftConv2d, ShiftConv2dConfig, ShiftLinear, ShiftLinearConfig};

mod resnet;
mod small_cnn;

pub use resnet::{BasicBlock, ResNet};
pub use small_cnn::SmallCnn;

/// A conv layer that is either float or shift, as the spec says.
#[derive(Module, Debug)]
pub enum ConvLayer {
    Float(Conv2d),
    Shift(ShiftConv2d),
}

impl ConvLayer {
    fn from_spec(spec: &LayerSpec, settings: &ShiftSettings, device: &Device) -> ConvLayer {
        let LayerKind::Conv {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            bias,
        } = spec.kind
        else {
            unreachable_spec(spec, "conv")
        };
        if spec.shift {
            ConvLayer::Shift(
                ShiftConv2dConfig::new([in_channels, out_channels], kernel, *settings)
                    .with_stride(stride)
                    .with_padding(padding)
                    .with_bias(bias)
                    .init(device),
            )
        } else {
            ConvLayer::Float(
                Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(
                        padding, padding, padding, padding,
                    ))
                    .with_bias(bias)
                    .init(device),
            )
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            ConvLayer::Float(c) => c.forward(x),
            ConvLayer::Shift(c) => c.forward(x),
        }
    }
}

/// A linear layer that is either float or shift.
#[derive(Module, Debug)]
pub enum DenseLayer {
    Float(Linear),
    Shift(ShiftLinear),
}

impl DenseLayer {
    fn from_spec(spec: &LayerSpec, settings: &ShiftSettings, device: &Device) -> DenseLayer {
        let LayerKind::Linear {
            in_features,
            out_features,
            bias,
        } = spec.kind
        else {
            unreachable_spec(spec, "linear")
        };
        if spec.shift {
            let mut c = ShiftLinearConfig::new(in_features, out_features, *settings);
            c.bias = bias;
            DenseLayer::Shift(c.init(device))
        } else {
            DenseLayer::Float(
                LinearConfig::new(in_features, out_features)
                    .with_bias(bias)
                    .init(device),
            )
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            DenseLayer::Float(l) => l.forward(x),
            DenseLayer::Shift(l) => l.forward(x),
        }
    }
}

/// The spec and the builders are written together; a mismatch is a bug in this crate.
#[allow(clippy::panic)]
fn unreachable_spec(spec: &LayerSpec, wanted: &str) -> ! {
    panic!(
        "layer table out of step with the model builder: {} is a {}, expected {wanted}",
        spec.name,
        spec.kind.short_name()
    )
}

/// Hands out the spec's layers in order to the builders.
struct SpecCursor<'a> {
    layers: std::slice::Iter<'a, LayerSpec>,
    settings: ShiftSettings,
}

impl<'a> SpecCursor<'a> {
    fn new(spec: &'a NetSpec) -> Self {
        Self {
            layers: spec.layers.iter(),
            settings: spec.shift,
        }
    }

    fn peek(&self) -> Option<&'a LayerSpec> {
        self.layers.clone().next()
    }

    fn next(&mut self, wanted: &str) -> &'a LayerSpec {
        match self.layers.next() {
            Some(l) => l,
            None => panic_end(wanted),
        }
    }

    fn conv(&mut self, device: &Device) -> ConvLayer {
        let s = self.settings;
        ConvLayer::from_spec(self.next("conv"), &s, device)
    }

    fn dense(&mut self, device: &Device) -> DenseLayer {
        let s = self.settings;
        DenseLayer::from_spec(self.next("linear"), &s, device)
    }

    fn bn(&mut self, device: &Device) -> burn::nn::BatchNorm {
        let spec = self.next("batchnorm");
        let LayerKind::BatchNorm { features } = spec.kind else {
            unreachable_spec(spec, "batchnorm")
        };
        burn::nn::BatchNormConfig::new(features).init(device)
    }
}

#[allow(clippy::panic)]
fn panic_end(wanted: &str) -> ! {
    panic!("layer table ended before the model builder asked for a {wanted}")
}

/// Any network dsnn-hpo trains. One exists per trial, so the variants' size gap is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    ResNet(ResNet),
    SmallCnn(SmallCnn),
}

impl Network {
    /// Builds the network of `spec` with freshly initialised weights on `device`.
    pub fn init(spec: &NetSpec, device: &Device) -> Network {
        let mut cursor = SpecCursor::new(spec);
        match spec.model {
            Backbone::SmallCnn => Network::SmallCnn(SmallCnn::init(&mut cursor, device)),
            _ => Network::ResNet(ResNet::init(&mut cursor, device)),
        }
    }

    /// # Shapes
    /// - input `[batch, channels, height, width]`, output logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Network::ResNet(m) => m.forward(x),
            Network::SmallCnn(m) => m.forward(x),
        }
    }
}
