//! DeepShift semantics: what a shift weight is, which shifts a bit width allows, and the packed
//! integer format trained weights are exported in.
//!
//! The settings and the packed format are plain Rust (no burn) so that the optimizer, `describe`
//! and the energy model can use them; the burn layers and tensor quantizers live in the
//! submodules behind the `dsnn` feature.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[cfg(feature = "dsnn")]
pub mod cpu_conv;
#[cfg(feature = "dsnn")]
pub mod cpu_quant;
#[cfg(feature = "gpu-kernels")]
pub mod kernel;
#[cfg(feature = "dsnn")]
pub mod layer;
#[cfg(feature = "dsnn")]
pub mod quant;

/// DeepShift-Q rounds float weights in the forward pass; DeepShift-PS trains shift and sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShiftKind {
    Q,
    Ps,
}

impl fmt::Display for ShiftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShiftKind::Q => "q",
            ShiftKind::Ps => "ps",
        })
    }
}

impl FromStr for ShiftKind {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q" => Ok(ShiftKind::Q),
            "ps" => Ok(ShiftKind::Ps),
            _ => Err(SettingsError::UnknownKind(s.to_string())),
        }
    }
}

/// Deterministic rounding is round-half-to-even; stochastic is floor(x) + Bernoulli(frac(x)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    Deterministic,
    Stochastic,
}

impl fmt::Display for Rounding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rounding::Deterministic => "deterministic",
            Rounding::Stochastic => "stochastic",
        })
    }
}

impl FromStr for Rounding {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "deterministic" | "det" => Ok(Rounding::Deterministic),
            "stochastic" | "stoch" => Ok(Rounding::Stochastic),
            _ => Err(SettingsError::UnknownRounding(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("unknown shift type '{0}': expected q or ps")]
    UnknownKind(String),
    #[error("unknown rounding '{0}': expected deterministic or stochastic")]
    UnknownRounding(String),
    #[error("weight_bits = {0} is out of range: expected an integer in 2..=8")]
    WeightBits(u32),
    #[error("{field} = {value} is out of range: expected an integer in 1..=32")]
    ActivationBits { field: &'static str, value: u32 },
    #[error("packed weights are corrupt: {0}")]
    Packed(String),
}

/// Everything that makes a layer a shift layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftSettings {
    pub kind: ShiftKind,
    pub weight_bits: u32,
    pub rounding: Rounding,
    pub activation_integer_bits: u32,
    pub activation_fraction_bits: u32,
}

impl Default for ShiftSettings {
    /// The default DSNN of the paper's search space: PS, 5 bits, deterministic, 16.16 fixed point.
    fn default() -> Self {
        Self {
            kind: ShiftKind::Ps,
            weight_bits: 5,
            rounding: Rounding::Deterministic,
            activation_integer_bits: 16,
            activation_fraction_bits: 16,
        }
    }
}

impl ShiftSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(2..=8).contains(&self.weight_bits) {
            return Err(SettingsError::WeightBits(self.weight_bits));
        }
        for (field, value) in [
            ("activation_integer_bits", self.activation_integer_bits),
            ("activation_fraction_bits", self.activation_fraction_bits),
        ] {
            if !(1..=32).contains(&value) {
                return Err(SettingsError::ActivationBits { field, value });
            }
        }
        Ok(())
    }

    /// Inclusive range of the exponent p. Q uses all 2^(b-1) magnitudes; PS gives one code to
    /// the zero sign, so its range is one shorter (DeepShift's convention).
    pub fn shift_range(&self) -> (i32, i32) {
        shift_range(self.kind, self.weight_bits)
    }

    /// Bounds of the fixed-point activation grid: (step, min, max).
    pub fn activation_grid(&self) -> (f64, f64, f64) {
        let step = (-(self.activation_fraction_bits as f64)).exp2();
        let half = ((self.activation_integer_bits as f64) - 1.0).exp2();
        (step, -half, half - 1.0)
    }
}

/// See [`ShiftSettings::shift_range`].
pub fn shift_range(kind: ShiftKind, weight_bits: u32) -> (i32, i32) {
    let mags = 1i32 << (weight_bits.clamp(1, 8) - 1);
    match kind {
        ShiftKind::Q => (-(mags - 1), 0),
        ShiftKind::Ps => ((-(mags - 2)).min(0), 0),
    }
}

/// One exported weight: w = sign * 2^shift. PS may have sign 0 (a pruned weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftWeight {
    pub sign: i8,
    pub shift: i8,
}

impl ShiftWeight {
    /// Exact value: 2^shift is a power of two, so the f32 is exact for every allowed shift.
    pub fn value(self) -> f32 {
        if self.sign == 0 {
            0.0
        } else {
            f32::from(self.sign) * 2f32.powi(i32::from(self.shift))
        }
    }
}

/// A layer's weights as integers, `weight_bits` per weight, packed LSB-first.
///
/// Code layout: the top bit is the sign (1 = negative) and the low `b-1` bits hold `-shift`.
/// PS spends the magnitude code `2^(b-1)-1` (unused by its shorter range) on the zero weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedShiftWeights {
    pub kind: ShiftKind,
    pub weight_bits: u32,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl PackedShiftWeights {
    pub fn pack(
        kind: ShiftKind,
        weight_bits: u32,
        shape: Vec<usize>,
        weights: &[ShiftWeight],
    ) -> Result<Self, SettingsError> {
        let b = weight_bits as usize;
        let zero_code = (1u32 << (b - 1)) - 1;
        let (lo, hi) = shift_range(kind, weight_bits);
        let mut data = vec![0u8; (weights.len() * b).div_ceil(8)];
        for (i, w) in weights.iter().enumerate() {
            let code: u32 = if w.sign == 0 {
                if kind == ShiftKind::Q {
                    return Err(SettingsError::Packed(format!(
                        "weight {i} has sign 0, which DeepShift-Q cannot represent"
                    )));
                }
                zero_code
            } else {
                let s = i32::from(w.shift);
                if s < lo || s > hi {
                    return Err(SettingsError::Packed(format!(
                        "weight {i} has shift {s}, outside {lo}..={hi} for {weight_bits} bits"
                    )));
                }
                (u32::from(w.sign < 0) << (b - 1)) | ((-s) as u32)
            };
            for bit in 0..b {
                if code >> bit & 1 == 1 {
                    let pos = i * b + bit;
                    data[pos / 8] |= 1 << (pos % 8);
                }
            }
        }
        Ok(Self {
            kind,
            weight_bits,
            shape,
            data,
        })
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn unpack(&self) -> Result<Vec<ShiftWeight>, SettingsError> {
        let b = self.weight_bits as usize;
        if !(2..=8).contains(&b) {
            return Err(SettingsError::WeightBits(self.weight_bits));
        }
        let n = self.len();
        if self.data.len() != (n * b).div_ceil(8) {
            return Err(SettingsError::Packed(format!(
                "{} bytes for {n} weights of {b} bits",
                self.data.len()
            )));
        }
        let mag_mask = (1u32 << (b - 1)) - 1;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut code = 0u32;
            for bit in 0..b {
                let pos = i * b + bit;
                code |= u32::from(self.data[pos / 8] >> (pos % 8) & 1) << bit;
            }
            let mag = code & mag_mask;
            let negative = code >> (b - 1) & 1 == 1;
            if self.kind == ShiftKind::Ps && mag == mag_mask {
                out.push(ShiftWeight { sign: 0, shift: 0 });
            } else {
                out.push(ShiftWeight {
                    sign: if negative { -1 } else { 1 },
                    shift: -(mag as i8),
                });
            }
        }
        Ok(out)
    }
}

/// The scale 2^F and the clamp bounds -2^(I-1), 2^(I-1) - 1 of the fixed-point rule: shared by
/// the tensor quantizer (`quant`) and the GPU kernel (`kernel`), which no longer import each other.
pub fn fixed_point_constants(int_bits: u32, frac_bits: u32) -> (f64, f64, f64) {
    let half = ((int_bits as f64) - 1.0).exp2();
    ((frac_bits as f64).exp2(), -half, half - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_deepshift() {
        assert_eq!(shift_range(ShiftKind::Q, 5), (-15, 0));
        assert_eq!(shift_range(ShiftKind::Q, 4), (-7, 0));
        assert_eq!(shift_range(ShiftKind::Q, 3), (-3, 0));
        assert_eq!(shift_range(ShiftKind::Q, 2), (-1, 0));
        assert_eq!(shift_range(ShiftKind::Q, 8), (-127, 0));
        assert_eq!(shift_range(ShiftKind::Ps, 5), (-14, 0));
        assert_eq!(shift_range(ShiftKind::Ps, 2), (0, 0));
        assert_eq!(shift_range(ShiftKind::Ps, 8), (-126, 0));
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = ShiftSettings {
            weight_bits: 9,
            ..Default::default()
        };
        assert_eq!(s.validate(), Err(SettingsError::WeightBits(9)));
        s.weight_bits = 2;
        s.activation_fraction_bits = 0;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("activation_fraction_bits = 0"), "{e}");
    }

    #[test]
    fn pack_roundtrip_every_code() {
        for kind in [ShiftKind::Q, ShiftKind::Ps] {
            for bits in 2..=8u32 {
                let (lo, hi) = shift_range(kind, bits);
                let mut ws = Vec::new();
                for s in lo..=hi {
                    ws.push(ShiftWeight {
                        sign: 1,
                        shift: s as i8,
                    });
                    ws.push(ShiftWeight {
                        sign: -1,
                        shift: s as i8,
                    });
                }
                if kind == ShiftKind::Ps {
                    ws.push(ShiftWeight { sign: 0, shift: 0 });
                }
                let p = PackedShiftWeights::pack(kind, bits, vec![ws.len()], &ws).unwrap();
                assert_eq!(p.data.len(), (ws.len() * bits as usize).div_ceil(8));
                assert_eq!(p.unpack().unwrap(), ws, "{kind} {bits}");
            }
        }
    }

    #[test]
    fn pack_rejects_out_of_range() {
        let w = [ShiftWeight {
            sign: 1,
            shift: -15,
        }];
        assert!(PackedShiftWeights::pack(ShiftKind::Ps, 5, vec![1], &w).is_err());
        assert!(PackedShiftWeights::pack(ShiftKind::Q, 5, vec![1], &w).is_ok());
        let z = [ShiftWeight { sign: 0, shift: 0 }];
        assert!(PackedShiftWeights::pack(ShiftKind::Q, 5, vec![1], &z).is_err());
    }

    #[test]
    fn five_bit_code_by_hand() {
        // -2^-3 in 5 bits: sign 1, magnitude 3 -> 0b1_0011 = 0x13.
        let w = [ShiftWeight {
            sign: -1,
            shift: -3,
        }];
        let p = PackedShiftWeights::pack(ShiftKind::Q, 5, vec![1], &w).unwrap();
        assert_eq!(p.data, vec![0x13]);
        assert_eq!(w[0].value(), -0.125);
    }

    #[test]
    fn activation_grid_16_16() {
        let s = ShiftSettings::default();
        let (step, lo, hi) = s.activation_grid();
        assert_eq!(step, 1.0 / 65536.0);
        assert_eq!((lo, hi), (-32768.0, 32767.0));
    }
}
