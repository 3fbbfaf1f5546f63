//! The burn networks, built from an [`arch::NetSpec`](crate::arch::NetSpec) so that the layer
//! table `describe` prints is exactly the network that trains.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::arch::{Backbone, LayerKind, LayerSpec, NetSpec};
use crate::shift::ShiftSettings;
use crate::shift::cpu_conv::{Conv2dParams, conv2d_auto};
use crate::shift::layer::{ShiftConv2d, ShiftConv2dConfig, ShiftLinear, ShiftLinearConfig};

pub mod batch_norm;
mod conv_bn;
pub mod drop_connect;
mod efficientnet;
mod efficientnetv2;
mod googlenet;
mod mobilenetv2;
pub mod residual;
mod resnet;
mod small_cnn;
mod vgg;

pub use conv_bn::ConvBn;
pub use drop_connect::DropConnect;
pub use efficientnet::{EfficientNet, SeBlock};
pub use efficientnetv2::{ConvNorm, EfficientNetV2, FusedMbConv, MbConv, V2Block};
pub use googlenet::{GoogLeNet, Inception};
pub use mobilenetv2::{InvertedResidual, MobileNetV2, Shortcut};
pub use resnet::{BasicBlock, ResNet};
pub use small_cnn::SmallCnn;
pub use vgg::{Vgg, VggStage};

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
            groups,
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
                    .with_groups(groups)
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
                    .with_groups(groups)
                    .init(device),
            )
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            ConvLayer::Float(c) => match c.padding {
                // The layers `from_spec` builds: explicit symmetric padding, no dilation.
                PaddingConfig2d::Explicit(top, left, bottom, right)
                    if top == bottom && left == right && c.dilation == [1, 1] =>
                {
                    conv2d_auto(
                        x,
                        c.weight.val(),
                        c.bias.as_ref().map(|b| b.val()),
                        Conv2dParams::new(c.stride, [top, left], c.groups),
                    )
                }
                _ => c.forward(x),
            },
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

    /// Depthwise (grouped) convs left in the table: one per inverted-residual block.
    fn depthwise_left(&self) -> usize {
        self.layers
            .clone()
            .filter(|l| l.kind.is_grouped_conv())
            .count()
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

    /// A max-pool row. burn's CPU backend skips padded positions, like PyTorch; every pool here
    /// follows a ReLU anyway, so zero padding would give the same maxima on any backend.
    fn max_pool(&mut self) -> MaxPool2d {
        let spec = self.next("maxpool");
        let LayerKind::MaxPool {
            kernel,
            stride,
            padding,
        } = spec.kind
        else {
            unreachable_spec(spec, "maxpool")
        };
        MaxPool2dConfig::new([kernel, kernel])
            .with_strides([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .init()
    }

    /// Consumes a SiLU row if the next row is one: whether the activation here is SiLU
    /// (tables without SiLU rows use ReLU, which has none).
    fn silu(&mut self) -> bool {
        let is_silu = self.peek().is_some_and(|l| l.kind == LayerKind::Silu);
        if is_silu {
            self.layers.next();
        }
        is_silu
    }

    /// Consumes the SiLU row a block built with SiLU must have here.
    fn expect_silu(&mut self, silu: bool) {
        if silu {
            let spec = self.next("silu");
            if spec.kind != LayerKind::Silu {
                unreachable_spec(spec, "silu")
            }
        }
    }

    /// A global-average-pool row; it has no module, see [`global_avg_pool`].
    fn global_avg_pool(&mut self) {
        let spec = self.next("avgpool");
        if spec.kind != LayerKind::GlobalAvgPool {
            unreachable_spec(spec, "avgpool")
        }
    }

    fn bn(&mut self, device: &Device) -> burn::nn::BatchNorm {
        let spec = self.next("batchnorm");
        let LayerKind::BatchNorm { features } = spec.kind else {
            unreachable_spec(spec, "batchnorm")
        };
        burn::nn::BatchNormConfig::new(features).init(device)
    }
}

/// ReLU, or SiLU where the table has a SiLU row (its lap is that row's).
pub(crate) fn activate<const D: usize>(
    x: Tensor<D>,
    silu: bool,
    laps: &mut impl Laps,
) -> Tensor<D> {
    if silu {
        laps.layer(burn::tensor::activation::silu(x))
    } else {
        laps.other(burn::tensor::activation::relu(x))
    }
}

/// Mean over height and width.
///
/// # Shapes
/// - input `[batch, channels, height, width]`, output `[batch, channels]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [b, c, _, _] = x.dims();
    x.mean_dims(&[2, 3]).reshape([b, c])
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
    MobileNetV2(MobileNetV2),
    EfficientNet(EfficientNet),
    Vgg(Vgg),
    GoogLeNet(GoogLeNet),
    EfficientNetV2(EfficientNetV2),
}

impl Network {
    /// Builds the network of `spec` with freshly initialised weights on `device`.
    pub fn init(spec: &NetSpec, device: &Device) -> Network {
        let mut cursor = SpecCursor::new(spec);
        match spec.model {
            Backbone::SmallCnn => Network::SmallCnn(SmallCnn::init(&mut cursor, device)),
            Backbone::Mobilenetv2 => Network::MobileNetV2(MobileNetV2::init(&mut cursor, device)),
            Backbone::EfficientnetB0 => {
                Network::EfficientNet(EfficientNet::init(&mut cursor, device))
            }
            Backbone::Vgg19 => Network::Vgg(Vgg::init(&mut cursor, device)),
            Backbone::Googlenet => Network::GoogLeNet(GoogLeNet::init(&mut cursor, device)),
            Backbone::Efficientnetv2B0 => {
                Network::EfficientNetV2(EfficientNetV2::init(&mut cursor, device))
            }
            _ => Network::ResNet(ResNet::init(&mut cursor, device)),
        }
    }

    /// # Shapes
    /// - input `[batch, channels, height, width]`, output logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, &mut NoLaps)
    }

    /// The training forward pass: [`Network::forward`] with `drop` applied to the residual
    /// branches of the EfficientNets (the other backbones have none; the config refuses drop
    /// connect for them). On a device without autodiff (evaluation) it is `forward`.
    pub fn forward_train(&self, x: Tensor<4>, drop: Option<&DropConnect>) -> Tensor<2> {
        match self {
            Network::EfficientNet(m) => m.forward_drop(x, &mut NoLaps, drop),
            Network::EfficientNetV2(m) => m.forward_drop(x, &mut NoLaps, drop),
            _ => self.forward(x),
        }
    }

    /// The forward pass with `laps` told after every layer of the layer table (in table order)
    /// and after the work between them.
    pub fn forward_with(&self, x: Tensor<4>, laps: &mut impl Laps) -> Tensor<2> {
        match self {
            Network::ResNet(m) => m.forward_with(x, laps),
            Network::SmallCnn(m) => m.forward_with(x, laps),
            Network::MobileNetV2(m) => m.forward_with(x, laps),
            Network::EfficientNet(m) => m.forward_with(x, laps),
            Network::Vgg(m) => m.forward_with(x, laps),
            Network::GoogLeNet(m) => m.forward_with(x, laps),
            Network::EfficientNetV2(m) => m.forward_with(x, laps),
        }
    }
}

/// Observes a forward pass layer by layer, for the per-layer energy profile. The plain forward
/// uses [`NoLaps`], which compiles away, so the models have one forward each.
pub trait Laps {
    /// After the next layer of the layer table (conv, batch norm, pooling or linear), in table
    /// order.
    fn layer<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D>;
    /// After work outside the table's layers: activations (a ReLU fused into its batch norm
    /// counts as the batch norm's), the pooling of tables without pooling rows (ResNet, small
    /// CNN), shortcuts, concatenations, reshapes.
    fn other<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D>;
}

/// Observes nothing.
pub struct NoLaps;

impl Laps for NoLaps {
    #[inline(always)]
    fn layer<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        t
    }
    #[inline(always)]
    fn other<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        t
    }
}

/// Wall time of each layer of the table, summed over the passes it sees: the device is
/// synchronised after every layer, so each layer's time is its own (on GPUs as on the CPU).
pub struct LayerClock {
    device: Device,
    last: std::time::Instant,
    next: usize,
    /// Seconds per layer of the table, in table order.
    pub layer_s: Vec<f64>,
    /// Seconds outside the table's layers.
    pub other_s: f64,
}

impl LayerClock {
    pub fn new(layers: usize, device: &Device) -> LayerClock {
        LayerClock {
            device: device.clone(),
            last: std::time::Instant::now(),
            next: 0,
            layer_s: vec![0.0; layers],
            other_s: 0.0,
        }
    }

    /// Starts a forward pass: the time until the first lap is the first layer's.
    pub fn start(&mut self) {
        let _ = self.device.sync();
        self.next = 0;
        self.last = std::time::Instant::now();
    }

    fn lap(&mut self) -> f64 {
        let _ = self.device.sync();
        let now = std::time::Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        dt
    }
}

impl Laps for LayerClock {
    fn layer<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        let dt = self.lap();
        match self.layer_s.get_mut(self.next) {
            Some(s) => *s += dt,
            None => self.other_s += dt,
        }
        self.next += 1;
        t
    }

    fn other<const D: usize>(&mut self, t: Tensor<D>) -> Tensor<D> {
        self.other_s += self.lap();
        t
    }
}
