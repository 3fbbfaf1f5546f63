//! The `[energy]` configuration: which source, where the machine is (carbon intensity), PUE,
//! estimate parameters and the op-count per-operation energies.
//!
//! ```toml
//! source = "auto"            # auto | nvml | rapl | estimate
//! country = "DEU"            # ISO 3166 alpha-3 (or alpha-2); omitted: world average 475 g/kWh
//! # intensity_g_per_kwh = 300.0   # overrides the country's figure
//! pue = 1.0                  # >= 1.0
//! # cpu_tdp_w = 65.0         # estimate: package TDP (default 85 W, CodeCarbon's)
//! # cpu_w_per_core = 10.0    # estimate: watts per busy core (overrides cpu_tdp_w)
//! ram_w_per_gb = 0.375       # estimate: 3 W per 8 GiB resident
//! target_rel_ci = 0.02       # repeat an inference pass until the 95% CI of the mean is within 2%
//! max_passes = 10            # ... or this many passes were measured
//! warmup_passes = 1          # passes run first and left out of the mean
//! [opcount]
//! weight_read_pj_per_32bit = 5.0
//! ```
//!
//! Embed it in a larger config as `#[serde(default)] energy: EnergyConfig`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::carbon::Carbon;
use super::estimate::DEFAULT_RAM_W_PER_GIB;
use super::opcount::OpEnergies;
use super::{EnergyError, Source};

/// Energy metering configuration; every field has a default, unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    /// Source selection (default `auto`).
    pub source: Source,
    /// ISO 3166 alpha-3 (or alpha-2) country code for the grid's carbon intensity.
    pub country: Option<String>,
    /// Explicit grid carbon intensity, g CO2-eq/kWh (wins over `country`).
    pub intensity_g_per_kwh: Option<f64>,
    /// Power usage effectiveness of the facility, >= 1.0 (default 1.0).
    pub pue: f64,
    /// Package TDP for the CPU estimate, W (default 85 W, CodeCarbon's unknown-model figure).
    pub cpu_tdp_w: Option<f64>,
    /// Watts per busy logical core for the CPU estimate (overrides `cpu_tdp_w`).
    pub cpu_w_per_core: Option<f64>,
    /// RAM estimate, watts per GiB resident (default 3/8 = 0.375).
    pub ram_w_per_gb: f64,
    /// Repeated inference measurement: stop once the 95% CI half-width of the mean pass is at
    /// most this share of the mean (0 < x <= 1).
    pub target_rel_ci: f64,
    /// ... or once this many passes were measured (>= 1).
    pub max_passes: usize,
    /// Passes run before the measured ones and left out of the mean (their energy still counts).
    pub warmup_passes: usize,
    /// Per-layer inference energy (op counts, op-count energy, measured share) in each trial's record.
    pub per_layer: bool,
    /// Per-operation energies of the op-count model.
    pub opcount: OpEnergies,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            source: Source::Auto,
            country: None,
            intensity_g_per_kwh: None,
            pue: 1.0,
            cpu_tdp_w: None,
            cpu_w_per_core: None,
            ram_w_per_gb: DEFAULT_RAM_W_PER_GIB,
            target_rel_ci: 0.02,
            max_passes: 10,
            warmup_passes: 1,
            per_layer: false,
            opcount: OpEnergies::default(),
        }
    }
}

fn positive(field: &str, v: Option<f64>, unit: &str) -> Result<(), EnergyError> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => Err(EnergyError::Invalid {
            field: field.into(),
            value: x.to_string(),
            expected: format!("expected a power > 0 {unit}"),
        }),
        _ => Ok(()),
    }
}

impl EnergyConfig {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<EnergyConfig, EnergyError> {
        let cfg: EnergyConfig = toml::from_str(text).map_err(|e| EnergyError::ConfigToml {
            path: origin.to_path_buf(),
            source: Box::new(e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a TOML file holding the fields above at top level.
    pub fn from_file(path: &Path) -> Result<EnergyConfig, EnergyError> {
        let text = std::fs::read_to_string(path).map_err(|e| EnergyError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        EnergyConfig::from_toml_str(&text, path)
    }

    /// Checks every value; errors name the field, the value and what is expected.
    pub fn validate(&self) -> Result<(), EnergyError> {
        self.carbon()?;
        positive("cpu_tdp_w", self.cpu_tdp_w, "W")?;
        positive("cpu_w_per_core", self.cpu_w_per_core, "W per core")?;
        if !(self.ram_w_per_gb.is_finite() && self.ram_w_per_gb >= 0.0) {
            return Err(EnergyError::Invalid {
                field: "ram_w_per_gb".into(),
                value: self.ram_w_per_gb.to_string(),
                expected: "expected a power >= 0 W per GiB (default 0.375 = 3 W per 8 GiB)".into(),
            });
        }
        if !(self.target_rel_ci.is_finite()
            && self.target_rel_ci > 0.0
            && self.target_rel_ci <= 1.0)
        {
            return Err(EnergyError::Invalid {
                field: "target_rel_ci".into(),
                value: self.target_rel_ci.to_string(),
                expected:
                    "expected a share of the mean in (0, 1], e.g. 0.02 for a 95% interval within 2%"
                        .into(),
            });
        }
        if self.max_passes == 0 {
            return Err(EnergyError::Invalid {
                field: "max_passes".into(),
                value: "0".into(),
                expected: "expected at least 1 measured pass".into(),
            });
        }
        self.opcount.validate()
    }

    /// How inference passes are repeated.
    pub fn repeat(&self) -> super::RepeatSettings {
        super::RepeatSettings {
            target_rel_ci: self.target_rel_ci,
            max_passes: self.max_passes,
            warmup_passes: self.warmup_passes,
        }
    }

    /// The carbon parameters (intensity, PUE, country) this config resolves to.
    pub fn carbon(&self) -> Result<Carbon, EnergyError> {
        Carbon::resolve(self.country.as_deref(), self.intensity_g_per_kwh, self.pue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_toml() {
        let c = EnergyConfig::from_toml_str("", Path::new("e.toml")).unwrap();
        assert_eq!(c, EnergyConfig::default());
        assert_eq!(c.ram_w_per_gb, 0.375);
        assert_eq!(c.opcount.float_mult_pj, 3.7);
    }

    #[test]
    fn full_toml() {
        let text = "source = \"estimate\"\ncountry = \"fr\"\npue = 1.2\ncpu_tdp_w = 65.0\n\
                    [opcount]\nweight_read_pj_per_32bit = 5.0\n";
        let c = EnergyConfig::from_toml_str(text, Path::new("e.toml")).unwrap();
        assert_eq!(c.source, Source::Estimate);
        assert_eq!(c.opcount.weight_read_pj_per_32bit, 5.0);
        assert_eq!(c.opcount.float_add_pj, 0.9);
        assert_eq!(c.carbon().unwrap().intensity_g_per_kwh, 56.04);
    }

    #[test]
    fn unknown_field_and_bad_source_name_file() {
        let e = EnergyConfig::from_toml_str("pue_factor = 2.0", Path::new("cfg/e.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg/e.toml") && e.contains("pue_factor"), "{e}");
        let e = EnergyConfig::from_toml_str("source = \"gpu\"", Path::new("e.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpu") && e.contains("auto"), "{e}");
    }

    #[test]
    fn bad_repeat_settings_name_the_key() {
        for (text, key) in [
            ("target_rel_ci = 0.0", "target_rel_ci = 0"),
            ("target_rel_ci = 1.5", "target_rel_ci = 1.5"),
            ("target_rel_ci = -0.1", "target_rel_ci = -0.1"),
            ("max_passes = 0", "max_passes = 0"),
        ] {
            let e = EnergyConfig::from_toml_str(text, Path::new("e.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("expected"), "{text}: {e}");
        }
        let c = EnergyConfig::from_toml_str(
            "target_rel_ci = 1.0
max_passes = 3",
            Path::new("e"),
        )
        .unwrap();
        assert_eq!((c.repeat().target_rel_ci, c.repeat().max_passes), (1.0, 3));
    }

    #[test]
    fn bad_powers() {
        let c = EnergyConfig {
            cpu_tdp_w: Some(-5.0),
            ..EnergyConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cpu_tdp_w = -5"), "{e}");
        let c = EnergyConfig {
            ram_w_per_gb: f64::NAN,
            ..EnergyConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("ram_w_per_gb = NaN")
        );
    }
}
