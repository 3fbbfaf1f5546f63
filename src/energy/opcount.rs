//! Op-count energy model: inference energy from per-layer operation counts.
//!
//! Why: measured energy depends on the machine, its load and the framework; the op-count model
//! is deterministic and hardware-free, so it ranks architectures (float vs shift layers, weight
//! bit widths) the same way on every machine. It is the energy objective DSNN papers use.
//!
//! Per layer and per image:
//! - arithmetic: a float layer costs `macs x (float mult + float add)` (3.7 + 0.9 = 4.6 pJ) and
//!   `bias_adds x float add`; a shift layer costs `macs x (shift + int add)` (0.1 + 0.1 pJ: the
//!   barrel shift is costed as a 32-bit int add, the accumulation is a 32-bit int add) and
//!   `bias_adds x int add` (fixed-point accumulator); `float_adds x float add` in any layer
//!   (pooling: a compare costed as an add, no multiply);
//! - weight memory: `params x weight_bits / 32` 32-bit words, each at `weight_read_pj_per_32bit`
//!   (default DRAM, 640 pJ: every image streams its weights, no reuse across images assumed; set
//!   it to the SRAM figure to model weights held on chip);
//! - activation memory: `(input_elems + output_elems) x activation_bits / 32` words at
//!   `activation_pj_per_32bit` (default SRAM 8 KB read, 5 pJ; a write is costed as a read).
//!
//! All figures are Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm; see [`horowitz`].

use serde::{Deserialize, Serialize};

use super::carbon::Carbon;
use super::host::HostInfo;
use super::record::{ComponentEnergy, EnergyRecord};
use super::{EnergyError, SourceKind};

/// Horowitz ISSCC 2014 energies at 45 nm, picojoules per operation.
pub mod horowitz {
    /// 32-bit float multiply.
    pub const FLOAT32_MULT_PJ: f64 = 3.7;
    /// 32-bit float add.
    pub const FLOAT32_ADD_PJ: f64 = 0.9;
    /// 32-bit int multiply.
    pub const INT32_MULT_PJ: f64 = 3.1;
    /// 32-bit int add.
    pub const INT32_ADD_PJ: f64 = 0.1;
    /// 8-bit int add.
    pub const INT8_ADD_PJ: f64 = 0.03;
    /// 8-bit int multiply.
    pub const INT8_MULT_PJ: f64 = 0.2;
    /// 32-bit read from an 8 KB SRAM (larger caches: about 10-100 pJ).
    pub const SRAM_8KB_READ_32BIT_PJ: f64 = 5.0;
    /// 32-bit DRAM read.
    pub const DRAM_READ_32BIT_PJ: f64 = 640.0;
}

/// Per-operation energies in picojoules; every field can be overridden in the config's
/// `[opcount]` table, missing fields keep the Horowitz 45 nm defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpEnergies {
    /// Float multiply of a float MAC (default 3.7 pJ, 32-bit float).
    pub float_mult_pj: f64,
    /// Float add of a float MAC and of a float bias add (default 0.9 pJ, 32-bit float).
    pub float_add_pj: f64,
    /// Shift of a shift-add (default 0.1 pJ: costed as a 32-bit int add).
    pub shift_pj: f64,
    /// Int add accumulating a shift product or adding a bias in a shift layer (default 0.1 pJ,
    /// 32-bit; 0.03 pJ for 8-bit accumulators).
    pub int_add_pj: f64,
    /// Reading 32 bits of weights (default 640 pJ, DRAM).
    pub weight_read_pj_per_32bit: f64,
    /// Reading or writing 32 bits of activations (default 5 pJ, 8 KB SRAM).
    pub activation_pj_per_32bit: f64,
    /// Bits per activation element (default 32, float activations).
    pub activation_bits: u32,
}

impl Default for OpEnergies {
    fn default() -> Self {
        OpEnergies {
            float_mult_pj: horowitz::FLOAT32_MULT_PJ,
            float_add_pj: horowitz::FLOAT32_ADD_PJ,
            shift_pj: horowitz::INT32_ADD_PJ,
            int_add_pj: horowitz::INT32_ADD_PJ,
            weight_read_pj_per_32bit: horowitz::DRAM_READ_32BIT_PJ,
            activation_pj_per_32bit: horowitz::SRAM_8KB_READ_32BIT_PJ,
            activation_bits: 32,
        }
    }
}

impl OpEnergies {
    /// Every energy finite and >= 0, activation bits in 1..=64.
    pub fn validate(&self) -> Result<(), EnergyError> {
        let fields = [
            ("opcount.float_mult_pj", self.float_mult_pj),
            ("opcount.float_add_pj", self.float_add_pj),
            ("opcount.shift_pj", self.shift_pj),
            ("opcount.int_add_pj", self.int_add_pj),
            (
                "opcount.weight_read_pj_per_32bit",
                self.weight_read_pj_per_32bit,
            ),
            (
                "opcount.activation_pj_per_32bit",
                self.activation_pj_per_32bit,
            ),
        ];
        for (field, v) in fields {
            if !(v.is_finite() && v >= 0.0) {
                return Err(EnergyError::Invalid {
                    field: field.into(),
                    value: v.to_string(),
                    expected: "expected an energy >= 0 pJ".into(),
                });
            }
        }
        if !(1..=64).contains(&self.activation_bits) {
            return Err(EnergyError::Invalid {
                field: "opcount.activation_bits".into(),
                value: self.activation_bits.to_string(),
                expected: "expected 1..=64 bits".into(),
            });
        }
        Ok(())
    }
}

/// Operation counts of one layer for one image, produced by the DL side from its layer table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCount {
    /// Layer name, for the breakdown.
    pub name: String,
    /// True for a shift layer (weights are signed powers of two).
    pub shift: bool,
    /// Bits per stored weight: 32 for float, sign + shift bits for shift layers.
    pub weight_bits: u32,
    /// Multiply-accumulates (float layer) or shift-adds (shift layer) per image.
    pub macs: u64,
    /// Float adds or compares per image outside the MACs (pooling windows), at the float add
    /// cost whether or not the layer is a shift layer.
    #[serde(default)]
    pub float_adds: u64,
    /// Stored weights read per image.
    pub params: u64,
    /// Bias additions per image.
    pub bias_adds: u64,
    /// Activation elements read per image.
    pub input_elems: u64,
    /// Activation elements written per image.
    pub output_elems: u64,
}

/// Energy of one layer for one image, joules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerEnergy {
    pub name: String,
    pub shift: bool,
    /// Arithmetic (MACs or shift-adds, bias adds).
    pub compute_j: f64,
    /// Weight reads.
    pub weight_memory_j: f64,
    /// Activation reads and writes.
    pub activation_memory_j: f64,
    /// Sum of the three.
    pub total_j: f64,
}

/// Op-count energy of a network for a pass of `images` images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpCountEnergy {
    /// Per-layer breakdown for one image.
    pub layers: Vec<LayerEnergy>,
    /// Arithmetic energy of one image (all layers).
    pub compute_j_per_image: f64,
    /// Weight plus activation memory energy of one image.
    pub memory_j_per_image: f64,
    /// Total energy of one image.
    pub per_image_j: f64,
    /// Images in the pass.
    pub images: u64,
    /// `per_image_j x images`.
    pub total_j: f64,
}

const PJ: f64 = 1e-12;

/// Energy of one layer for one image.
pub fn layer_energy(layer: &LayerCount, e: &OpEnergies) -> Result<LayerEnergy, EnergyError> {
    if !(1..=64).contains(&layer.weight_bits) {
        return Err(EnergyError::Invalid {
            field: format!("layer {:?}.weight_bits", layer.name),
            value: layer.weight_bits.to_string(),
            expected: "expected 1..=64 bits per weight (32 for float)".into(),
        });
    }
    let (mac_pj, bias_pj) = if layer.shift {
        (e.shift_pj + e.int_add_pj, e.int_add_pj)
    } else {
        (e.float_mult_pj + e.float_add_pj, e.float_add_pj)
    };
    let compute_pj = layer.macs as f64 * mac_pj
        + layer.bias_adds as f64 * bias_pj
        + layer.float_adds as f64 * e.float_add_pj;
    let weight_words = layer.params as f64 * f64::from(layer.weight_bits) / 32.0;
    let weight_pj = weight_words * e.weight_read_pj_per_32bit;
    let act_words = (layer.input_elems as f64 + layer.output_elems as f64)
        * f64::from(e.activation_bits)
        / 32.0;
    let act_pj = act_words * e.activation_pj_per_32bit;
    Ok(LayerEnergy {
        name: layer.name.clone(),
        shift: layer.shift,
        compute_j: compute_pj * PJ,
        weight_memory_j: weight_pj * PJ,
        activation_memory_j: act_pj * PJ,
        total_j: (compute_pj + weight_pj + act_pj) * PJ,
    })
}

/// Energy of a pass of `images` images through `layers` (each image costs the same; weights are
/// fetched per image, see the module doc). `images = 1` gives the per-image energy.
pub fn pass_energy(
    layers: &[LayerCount],
    images: u64,
    e: &OpEnergies,
) -> Result<OpCountEnergy, EnergyError> {
    e.validate()?;
    let layers = layers
        .iter()
        .map(|l| layer_energy(l, e))
        .collect::<Result<Vec<_>, _>>()?;
    let compute: f64 = layers.iter().map(|l| l.compute_j).sum();
    let memory: f64 = layers
        .iter()
        .map(|l| l.weight_memory_j + l.activation_memory_j)
        .sum();
    let per_image = compute + memory;
    Ok(OpCountEnergy {
        layers,
        compute_j_per_image: compute,
        memory_j_per_image: memory,
        per_image_j: per_image,
        images,
        total_j: per_image * images as f64,
    })
}

/// Energy of one image through `layers`.
pub fn per_image_energy(
    layers: &[LayerCount],
    e: &OpEnergies,
) -> Result<OpCountEnergy, EnergyError> {
    pass_energy(layers, 1, e)
}

impl OpCountEnergy {
    /// The pass as an [`EnergyRecord`] labelled `opcount`, with emissions under `carbon`.
    ///
    /// Mapping onto the record's components: arithmetic and activation traffic go under `cpu`
    /// (the processor that would run the inference, whatever it is), weight traffic under `ram`
    /// (DRAM by default); `gpu` is `none`. Duration is 0, so powers and the emissions rate are 0.
    pub fn to_record(&self, phase: &str, carbon: &Carbon) -> EnergyRecord {
        let weight_j: f64 =
            self.layers.iter().map(|l| l.weight_memory_j).sum::<f64>() * self.images as f64;
        let processor_j = self.total_j - weight_j;
        let mut host = HostInfo::detect_without_gpu();
        host.cpu_model = "op-count model (Horowitz ISSCC 2014, 45 nm)".into();
        EnergyRecord::new(
            phase,
            std::time::SystemTime::now(),
            0.0,
            [
                ComponentEnergy::new(SourceKind::Opcount, processor_j, 0.0),
                ComponentEnergy::new(SourceKind::None, 0.0, 0.0),
                ComponentEnergy::new(SourceKind::Opcount, weight_j, 0.0),
            ],
            carbon,
            &host,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, shift: bool, bits: u32, macs: u64) -> LayerCount {
        LayerCount {
            name: name.into(),
            shift,
            weight_bits: bits,
            macs,
            float_adds: 0,
            params: 0,
            bias_adds: 0,
            input_elems: 0,
            output_elems: 0,
        }
    }

    #[test]
    fn compute_only() {
        // 1000 float MACs x 4.6 pJ = 4600 pJ; 1000 shift-adds x 0.2 pJ = 200 pJ.
        let e = OpEnergies::default();
        let f = layer_energy(&layer("fc", false, 32, 1000), &e).unwrap();
        let s = layer_energy(&layer("sh", true, 5, 1000), &e).unwrap();
        assert!((f.compute_j - 4600e-12).abs() < 1e-20);
        assert!((s.compute_j - 200e-12).abs() < 1e-20);
        assert_eq!(f.weight_memory_j, 0.0);
    }

    #[test]
    fn pooling_adds_cost_a_float_add_each() {
        // 1000 compares x 0.9 pJ, with no multiply.
        let mut pool = layer("pool", false, 32, 0);
        pool.float_adds = 1000;
        let p = layer_energy(&pool, &OpEnergies::default()).unwrap();
        assert!((p.compute_j - 900e-12).abs() < 1e-20, "{}", p.compute_j);
    }

    #[test]
    fn zero_weight_bits_is_an_error() {
        let err = layer_energy(&layer("conv1", true, 0, 1), &OpEnergies::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"conv1\"") && err.contains("weight_bits = 0"),
            "{err}"
        );
    }
}
