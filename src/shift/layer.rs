//! `ShiftConv2d` and `ShiftLinear`: burn modules whose weights are signed powers of two.
//!
//! Both keep the trainable parameters DeepShift keeps (a float weight for Q; a shift and a
//! sign tensor for PS), quantize their input activations to fixed point, and can export
//! their weights as packed integers together with a forward that uses exactly those.

use burn::module::{Flag, Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::cpu_conv::{Conv2dParams, conv2d_auto};
use super::quant;
use super::{PackedShiftWeights, Rounding, SettingsError, ShiftKind, ShiftSettings, ShiftWeight};

/// PyTorch's (and burn's) default conv/linear init, so a Q layer starts where a float one does.
fn default_init() -> Initializer {
    Initializer::KaimingUniform {
        gain: 1.0 / 3f64.sqrt(),
        fan_out_only: false,
    }
}

/// The trainable weight tensors of a shift layer: Q keeps a float weight, PS a shift and a sign.
#[derive(Module, Debug)]
pub enum ShiftParams<const D: usize> {
    Q(Param<Tensor<D>>),
    Ps(PsParams<D>),
}

/// DeepShift-PS parameters: the float shift P (rounded in the forward pass) and sign S.
#[derive(Module, Debug)]
pub struct PsParams<const D: usize> {
    pub shift: Param<Tensor<D>>,
    pub sign: Param<Tensor<D>>,
}

impl<const D: usize> ShiftParams<D> {
    /// DeepShift's init: Q like a float layer; PS with P ~ U(p_lo, p_hi) and S ~ U(-1, 1).
    fn init(
        settings: &ShiftSettings,
        shape: [usize; D],
        fans: (usize, usize),
        ps_shift_init: (f64, f64),
        device: &Device,
    ) -> Self {
        match settings.kind {
            ShiftKind::Q => {
                ShiftParams::Q(default_init().init_with(shape, Some(fans.0), Some(fans.1), device))
            }
            ShiftKind::Ps => {
                let (lo, hi) = ps_shift_init;
                let shift = if hi > lo {
                    Tensor::<D>::random(shape, Distribution::Uniform(lo, hi), device)
                } else {
                    // A one-value range (PS at 2 bits: p = 0) has nothing to draw.
                    Tensor::<D>::full(shape, lo, device)
                };
                let sign = Tensor::<D>::random(shape, Distribution::Uniform(-1.0, 1.0), device);
                ShiftParams::Ps(PsParams {
                    shift: Param::from_tensor(shift),
                    sign: Param::from_tensor(sign),
                })
            }
        }
    }

    fn weight(&self, settings: &ShiftSettings, training: bool) -> Tensor<D> {
        // Stochastic rounding is a training-time regularizer; evaluation and export are
        // deterministic so that a trained network has one well-defined set of weights.
        let rounding = if training {
            settings.rounding
        } else {
            Rounding::Deterministic
        };
        match self {
            ShiftParams::Q(w) => quant::quantize_q(w.val(), settings.weight_bits, rounding),
            ShiftParams::Ps(ps) => quant::quantize_ps(
                ps.shift.val(),
                ps.sign.val(),
                settings.weight_bits,
                rounding,
            ),
        }
    }

    /// Deterministically rounded integer weights, in the tensor's row-major order.
    fn export(&self, settings: &ShiftSettings) -> Result<PackedShiftWeights, SettingsError> {
        let (kind, (p, s)) = match self {
            ShiftParams::Q(w) => (
                ShiftKind::Q,
                quant::q_shift_sign(w.val(), settings.weight_bits, Rounding::Deterministic),
            ),
            ShiftParams::Ps(ps) => (
                ShiftKind::Ps,
                quant::ps_shift_sign(
                    ps.shift.val(),
                    ps.sign.val(),
                    settings.weight_bits,
                    Rounding::Deterministic,
                ),
            ),
        };
        let shape = p.dims().to_vec();
        let p = to_vec(p)?;
        let s = to_vec(s)?;
        let weights: Vec<ShiftWeight> = p
            .iter()
            .zip(&s)
            .map(|(&p, &s)| ShiftWeight {
                sign: s as i8,
                shift: if s == 0.0 { 0 } else { p as i8 },
            })
            .collect();
        PackedShiftWeights::pack(kind, settings.weight_bits, shape, &weights)
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, SettingsError> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| SettingsError::Packed(format!("cannot read tensor: {e:?}")))
}

/// Fixed-point quantization with the layer's integer and fraction bits.
fn quantize_input<const D: usize>(s: &ShiftSettings, x: Tensor<D>) -> Tensor<D> {
    quant::fixed_point(x, s.activation_integer_bits, s.activation_fraction_bits)
}

fn bias_values(bias: &Option<Param<Tensor<1>>>) -> Result<Option<Vec<f32>>, SettingsError> {
    bias.as_ref().map(|b| to_vec(b.val())).transpose()
}

/// An exported float bias, quantized as the layer's forward pass quantizes it.
fn exported_bias(bias: &Option<Vec<f32>>, s: &ShiftSettings, device: &Device) -> Option<Tensor<1>> {
    bias.as_ref().map(|b| {
        quantize_input(
            s,
            Tensor::<1>::from_data(TensorData::new(b.clone(), [b.len()]), device),
        )
    })
}

/// Dequantizes packed weights to an exact f32 tensor.
pub fn unpack_tensor<const D: usize>(
    packed: &PackedShiftWeights,
    device: &Device,
) -> Result<Tensor<D>, SettingsError> {
    let values: Vec<f32> = packed
        .unpack()?
        .into_iter()
        .map(ShiftWeight::value)
        .collect();
    if packed.shape.len() != D {
        return Err(SettingsError::Packed(format!(
            "shape {:?} has rank {}, expected {D}",
            packed.shape,
            packed.shape.len()
        )));
    }
    Ok(Tensor::from_data(
        TensorData::new(values, packed.shape.clone()),
        device,
    ))
}

/// Configuration of a [`ShiftConv2d`]; square kernels, symmetric padding, optional channel
/// groups (MobileNetV2's depthwise convs).
#[derive(Debug, Clone)]
pub struct ShiftConv2dConfig {
    pub channels: [usize; 2],
    pub kernel_size: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    /// Channel groups; both channel counts must be multiples of it.
    pub groups: usize,
    pub settings: ShiftSettings,
}

impl ShiftConv2dConfig {
    pub fn new(channels: [usize; 2], kernel_size: usize, settings: ShiftSettings) -> Self {
        Self {
            channels,
            kernel_size,
            stride: 1,
            padding: 0,
            bias: false,
            groups: 1,
            settings,
        }
    }

    /// Splits the channels into `groups` groups (`groups` = both channel counts: depthwise).
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    pub fn with_padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    pub fn init(&self, device: &Device) -> ShiftConv2d {
        let [cin, cout] = self.channels;
        let k = self.kernel_size;
        let groups = self.groups.max(1);
        // Fans per group, as burn's and PyTorch's grouped convs compute them.
        let shape = [cout, cin / groups, k, k];
        let (fan_in, fan_out) = (cin / groups * k * k, cout / groups * k * k);
        let params = ShiftParams::init(
            &self.settings,
            shape,
            (fan_in, fan_out),
            (-10.0, -1.0),
            device,
        );
        let bias = self
            .bias
            .then(|| default_init().init_with([cout], Some(fan_in), Some(fan_out), device));
        ShiftConv2d {
            params,
            bias,
            stride: self.stride,
            padding: self.padding,
            groups,
            settings: self.settings,
            training: Param::from_bool(true),
        }
    }
}

/// A 2-D convolution with power-of-two weights and fixed-point inputs.
#[derive(Module, Debug)]
pub struct ShiftConv2d {
    pub params: ShiftParams<4>,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    #[module(skip)]
    pub settings: ShiftSettings,
    /// Turned off by `valid()`: evaluation rounds deterministically.
    pub training: Param<Flag>,
}

impl ShiftConv2d {
    /// The convolution, its input quantized to fixed point (folded into the fused op).
    fn params(&self) -> Conv2dParams {
        let s = &self.settings;
        Conv2dParams::new(
            [self.stride, self.stride],
            [self.padding, self.padding],
            self.groups,
        )
        .with_fixed_point_input(s.activation_integer_bits, s.activation_fraction_bits)
    }

    /// The weight the forward pass uses, `[out, in / groups, k, k]`.
    pub fn quantized_weight(&self) -> Tensor<4> {
        let training = self.training.is_enabled();
        self.params.weight(&self.settings, training)
    }

    /// # Shapes
    /// - input `[batch, in, h, w]`, output `[batch, out, h', w']`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let s = &self.settings;
        let bias = self.bias.as_ref().map(|b| quantize_input(s, b.val()));
        conv2d_auto(input, self.quantized_weight(), bias, self.params())
    }

    /// Packed integer weights (sign and shift per weight) and the float bias.
    pub fn export(&self) -> Result<ExportedShiftConv2d, SettingsError> {
        Ok(ExportedShiftConv2d {
            weights: self.params.export(&self.settings)?,
            bias: bias_values(&self.bias)?,
            stride: self.stride,
            padding: self.padding,
            groups: self.groups,
            settings: self.settings,
        })
    }
}

/// A conv layer as it would ship to shift hardware.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportedShiftConv2d {
    pub weights: PackedShiftWeights,
    pub bias: Option<Vec<f32>>,
    pub stride: usize,
    pub padding: usize,
    /// Absent in layers exported before grouped convs: 1.
    #[serde(default = "one")]
    pub groups: usize,
    pub settings: ShiftSettings,
}

fn one() -> usize {
    1
}

impl ExportedShiftConv2d {
    /// Inference with the exported integers: the same outputs as `ShiftConv2d::forward` of the
    /// layer in eval mode.
    pub fn forward(&self, input: Tensor<4>) -> Result<Tensor<4>, SettingsError> {
        let device = input.device();
        let s = &self.settings;
        let w = unpack_tensor::<4>(&self.weights, &device)?;
        let [cout, cin_group, _, _] = w.dims();
        let cin = input.dims()[1];
        if self.groups == 0 || cout % self.groups != 0 || cin_group * self.groups != cin {
            return Err(SettingsError::Packed(format!(
                "weights {:?} in {} groups do not fit an input of {cin} channels: expected \
                 groups >= 1 dividing {cout} outputs, and {cin} = groups * {cin_group}",
                self.weights.shape, self.groups
            )));
        }
        let bias = exported_bias(&self.bias, s, &device);
        let params = Conv2dParams::new(
            [self.stride, self.stride],
            [self.padding, self.padding],
            self.groups,
        )
        .with_fixed_point_input(s.activation_integer_bits, s.activation_fraction_bits);
        Ok(conv2d_auto(input, w, bias, params))
    }
}

/// Configuration of a [`ShiftLinear`].
#[derive(Debug, Clone)]
pub struct ShiftLinearConfig {
    pub d_input: usize,
    pub d_output: usize,
    pub bias: bool,
    pub settings: ShiftSettings,
}

impl ShiftLinearConfig {
    pub fn new(d_input: usize, d_output: usize, settings: ShiftSettings) -> Self {
        Self {
            d_input,
            d_output,
            bias: true,
            settings,
        }
    }

    pub fn init(&self, device: &Device) -> ShiftLinear {
        let (lo, hi) = self.settings.shift_range();
        let params = ShiftParams::init(
            &self.settings,
            [self.d_input, self.d_output],
            (self.d_input, self.d_output),
            (lo as f64, hi as f64),
            device,
        );
        let bias = self.bias.then(|| {
            default_init().init_with(
                [self.d_output],
                Some(self.d_input),
                Some(self.d_output),
                device,
            )
        });
        ShiftLinear {
            params,
            bias,
            settings: self.settings,
            training: Param::from_bool(true),
        }
    }
}

/// A linear layer with power-of-two weights (`[d_input, d_output]`, burn's row layout) and
/// fixed-point inputs.
#[derive(Module, Debug)]
pub struct ShiftLinear {
    pub params: ShiftParams<2>,
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub settings: ShiftSettings,
    pub training: Param<Flag>,
}

impl ShiftLinear {
    pub fn quantized_weight(&self) -> Tensor<2> {
        let training = self.training.is_enabled();
        self.params.weight(&self.settings, training)
    }

    /// # Shapes
    /// - input `[batch, d_input]`, output `[batch, d_output]`.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let s = &self.settings;
        let x = quantize_input(s, input);
        let bias = self.bias.as_ref().map(|b| quantize_input(s, b.val()));
        linear(x, self.quantized_weight(), bias)
    }

    pub fn export(&self) -> Result<ExportedShiftLinear, SettingsError> {
        Ok(ExportedShiftLinear {
            weights: self.params.export(&self.settings)?,
            bias: bias_values(&self.bias)?,
            settings: self.settings,
        })
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportedShiftLinear {
    pub weights: PackedShiftWeights,
    pub bias: Option<Vec<f32>>,
    pub settings: ShiftSettings,
}

impl ExportedShiftLinear {
    pub fn forward(&self, input: Tensor<2>) -> Result<Tensor<2>, SettingsError> {
        let device = input.device();
        let s = &self.settings;
        let w = unpack_tensor::<2>(&self.weights, &device)?;
        let bias = exported_bias(&self.bias, s, &device);
        Ok(linear(quantize_input(s, input), w, bias))
    }
}
