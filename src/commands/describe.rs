//! `dsnn-hpo describe`: the layer table of a network, as text or JSON.

use std::io::Write;

use clap::Args;
use serde::Serialize;

use crate::arch::{Activation, Backbone, InputShape, LayerKind, NetSpec, Totals};
use crate::error::Error;
use crate::shift::{Rounding, ShiftKind, ShiftSettings};

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Backbone: resnet20, resnet32, resnet44, resnet56, small-cnn, mobilenetv2,
    /// efficientnet-b0, vgg19, googlenet or efficientnetv2-b0.
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// relu or silu, for efficientnet-b0 (default relu, the fork's); the other backbones have
    /// one activation each.
    #[arg(long)]
    pub activation: Option<String>,
    /// Weight layers (conv and linear) converted to shift layers, counted from the output end;
    /// 0 = float network, the layer count or more = every layer.
    #[arg(long, default_value = "0", allow_negative_numbers = true)]
    pub shift_depth: i64,
    /// DeepShift variant: q (round float weights) or ps (train shift and sign).
    #[arg(long, default_value = "ps")]
    pub shift_type: String,
    /// Bits per shift weight (sign + shift), 2..=8.
    #[arg(long, default_value = "5", allow_negative_numbers = true)]
    pub weight_bits: i64,
    /// deterministic or stochastic.
    #[arg(long, default_value = "deterministic")]
    pub rounding: String,
    /// Integer bits of the fixed-point activations of shift layers, 1..=32.
    #[arg(long, default_value = "16", allow_negative_numbers = true)]
    pub activation_integer_bits: i64,
    /// Fraction bits of the fixed-point activations of shift layers, 1..=32.
    #[arg(long, default_value = "16", allow_negative_numbers = true)]
    pub activation_fraction_bits: i64,
    /// Input shape CxHxW; default 1x28x28 for small-cnn, 3x32x32 for the others.
    #[arg(long)]
    pub input: Option<String>,
    /// Number of classes.
    #[arg(long, default_value = "10")]
    pub classes: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn bits(
    flag: &'static str,
    v: i64,
    lo: i64,
    hi: i64,
    expected: &'static str,
) -> Result<u32, Error> {
    if v < lo || v > hi {
        return Err(Error::Flag {
            flag,
            value: v.to_string(),
            expected,
        });
    }
    Ok(v as u32)
}

impl DescribeArgs {
    pub fn spec(&self) -> Result<NetSpec, Error> {
        let model: Backbone = self.model.parse()?;
        if self.shift_depth < 0 {
            return Err(Error::Flag {
                flag: "--shift-depth",
                value: self.shift_depth.to_string(),
                expected: "expected a non-negative integer (0 = float network)",
            });
        }
        let settings = ShiftSettings {
            kind: self.shift_type.parse::<ShiftKind>()?,
            weight_bits: bits(
                "--weight-bits",
                self.weight_bits,
                2,
                8,
                "expected an integer in 2..=8",
            )?,
            rounding: self.rounding.parse::<Rounding>()?,
            activation_integer_bits: bits(
                "--activation-integer-bits",
                self.activation_integer_bits,
                1,
                32,
                "expected an integer in 1..=32",
            )?,
            activation_fraction_bits: bits(
                "--activation-fraction-bits",
                self.activation_fraction_bits,
                1,
                32,
                "expected an integer in 1..=32",
            )?,
        };
        settings.validate()?;
        let input = match &self.input {
            Some(s) => s.parse::<InputShape>()?,
            None if model == Backbone::SmallCnn => InputShape::new(1, 28, 28),
            None => InputShape::new(3, 32, 32),
        };
        let activation = match self.activation.as_deref() {
            None => model.activations()[0],
            Some(a) => match a.trim().to_ascii_lowercase().as_str() {
                "relu" => Activation::Relu,
                "silu" => Activation::Silu,
                _ => {
                    return Err(Error::Flag {
                        flag: "--activation",
                        value: a.to_string(),
                        expected: "expected relu or silu",
                    });
                }
            },
        };
        Ok(NetSpec::build_with(
            model,
            input,
            self.classes,
            settings,
            self.shift_depth as usize,
            activation,
        )?)
    }
}

#[derive(Serialize)]
struct DescribeJson<'a> {
    #[serde(flatten)]
    spec: &'a NetSpec,
    shift_range: (i32, i32),
    totals: Totals,
    shift_depth_definition: &'static str,
}

pub const SHIFT_DEPTH_DEFINITION: &str = "weight layers (conv and linear) converted to shift layers, \
counted from the output end; 0 = float network. DeepShift's shift_depth counts only conv layers from \
the output and always converts linear layers, so for a network with one final linear layer \
(the ResNets) ours = DeepShift's + 1.";

pub fn run(args: &DescribeArgs, out: &mut dyn Write) -> Result<(), Error> {
    let spec = args.spec()?;
    let totals = spec.totals();
    if args.json {
        let doc = DescribeJson {
            spec: &spec,
            shift_range: spec.shift.shift_range(),
            totals,
            shift_depth_definition: SHIFT_DEPTH_DEFINITION,
        };
        let text = serde_json::to_string_pretty(&doc)?;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    write_table(&spec, &totals, out)?;
    Ok(())
}

fn shape(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Thousands separators, for reading parameter and MAC counts at a glance.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn write_table(spec: &NetSpec, t: &Totals, out: &mut dyn Write) -> std::io::Result<()> {
    let s = &spec.shift;
    let (lo, hi) = s.shift_range();
    writeln!(
        out,
        "{} on {} inputs, {} classes, {} activations",
        spec.model, spec.input, spec.num_classes, spec.activation
    )?;
    writeln!(
        out,
        "shift_depth {}: the last {} of {} weight layers are shift layers (counted from the output; 0 = float network)",
        spec.shift_depth, t.shift_layers, t.weight_layers
    )?;
    if t.shift_layers > 0 {
        writeln!(
            out,
            "shift layers: DeepShift-{}, {}-bit weights (shift {lo}..={hi}), {} rounding, activations fixed point {}.{} (integer.fraction bits)",
            s.kind.to_string().to_uppercase(),
            s.weight_bits,
            s.rounding,
            s.activation_integer_bits,
            s.activation_fraction_bits
        )?;
    }
    writeln!(out)?;
    // MobileNetV2's names ("layers.16.shortcut.0") are longer than the ResNets'.
    let name_width = spec
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0)
        .max(16);
    writeln!(
        out,
        "{:>3}  {:<name_width$} {:<9} {:<16} {:<10} {:<10} {:<6} {:>9} {:>12}",
        "#", "layer", "kind", "weight shape", "input", "output", "type", "params", "MACs/img"
    )?;
    for (i, l) in spec.layers.iter().enumerate() {
        let wshape = match l.kind {
            LayerKind::Conv {
                in_channels,
                out_channels,
                kernel,
                groups,
                ..
            } => shape(&[out_channels, in_channels / groups.max(1), kernel, kernel]),
            LayerKind::Linear {
                in_features,
                out_features,
                ..
            } => shape(&[in_features, out_features]),
            LayerKind::BatchNorm { features } => shape(&[features]),
            LayerKind::MaxPool {
                kernel,
                stride,
                padding,
            } => format!("{kernel}x{kernel}/{stride}/{padding}"),
            LayerKind::GlobalAvgPool | LayerKind::Silu => "-".to_string(),
        };
        let kind = if l.shift { "shift" } else { "float" };
        let what = match l.kind {
            LayerKind::Conv {
                in_channels,
                groups,
                ..
            } if groups > 1 => {
                if groups == in_channels {
                    "conv dw".to_string()
                } else {
                    format!("conv g{groups}")
                }
            }
            _ => l.kind.short_name().to_string(),
        };
        writeln!(
            out,
            "{:>3}  {:<name_width$} {:<9} {:<16} {:<10} {:<10} {:<6} {:>9} {:>12}",
            i,
            l.name,
            what,
            wshape,
            shape(&l.input),
            shape(&l.output),
            kind,
            grouped(l.params()),
            grouped(l.macs)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "parameters      {:>14}   (trainable scalars {}{})",
        grouped(t.params),
        grouped(t.trainable),
        if t.trainable > t.params {
            ": PS trains a shift and a sign per weight"
        } else {
            ""
        }
    )?;
    writeln!(out, "float MACs/img  {:>14}", grouped(t.float_macs))?;
    writeln!(out, "shift-adds/img  {:>14}", grouped(t.shift_adds))?;
    writeln!(
        out,
        "norm ops/img    {:>14}   (batch-norm multiply-adds, float)",
        grouped(t.norm_ops)
    )?;
    if t.pool_ops > 0 {
        writeln!(
            out,
            "pool ops/img    {:>14}   (pooling compares and adds, float)",
            grouped(t.pool_ops)
        )?;
    }
    if t.activation_ops > 0 {
        writeln!(
            out,
            "SiLU ops/img    {:>14}   (float multiply-adds, {} per element: exp approximation, reciprocal, product)",
            grouped(t.activation_ops),
            crate::arch::SILU_MACS_PER_ELEMENT
        )?;
    }
    writeln!(out, "bias adds/img   {:>14}", grouped(t.bias_adds))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(272474), "272,474");
        assert_eq!(grouped(40_551_050), "40,551,050");
    }
}
