//! Carbon intensity, PUE and emissions.
//!
//! kg CO2-eq = energy (kWh) x PUE x carbon intensity (g/kWh) / 1000.
//!
//! The intensity table holds CodeCarbon's 2023 country figures (its global energy-mix data, as
//! quoted in this project's reference) for the countries listed there, and the world average of
//! 475 g/kWh used when no country or intensity is given. Other countries must give
//! `intensity_g_per_kwh` explicitly: we do not guess figures we cannot source. For comparison,
//! carbontracker defaults to 481 g/kWh and a PUE of 1.58; we default to PUE 1.0 (energy as
//! measured) so that numbers stay comparable with CodeCarbon's.

use serde::{Deserialize, Serialize};

use super::EnergyError;

/// World-average intensity (g CO2-eq/kWh) used when no country and no intensity are configured.
pub const WORLD_AVERAGE_G_PER_KWH: f64 = 475.0;

/// One row of the built-in table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CountryIntensity {
    /// ISO 3166-1 alpha-3.
    pub alpha3: &'static str,
    /// ISO 3166-1 alpha-2 (plus "UK", the reserved code commonly used for GBR).
    pub alpha2: &'static [&'static str],
    /// English short name, as written into the CSV's `country_name`.
    pub name: &'static str,
    /// Grid carbon intensity, g CO2-eq per kWh (CodeCarbon 2023).
    pub g_per_kwh: f64,
}

/// The built-in intensity table (CodeCarbon 2023 figures; see the module doc).
pub const COUNTRIES: &[CountryIntensity] = &[
    CountryIntensity {
        alpha3: "CAN",
        alpha2: &["CA"],
        name: "Canada",
        g_per_kwh: 170.04,
    },
    CountryIntensity {
        alpha3: "CHN",
        alpha2: &["CN"],
        name: "China",
        g_per_kwh: 582.32,
    },
    CountryIntensity {
        alpha3: "DEU",
        alpha2: &["DE"],
        name: "Germany",
        g_per_kwh: 380.95,
    },
    CountryIntensity {
        alpha3: "FRA",
        alpha2: &["FR"],
        name: "France",
        g_per_kwh: 56.04,
    },
    CountryIntensity {
        alpha3: "GBR",
        alpha2: &["GB", "UK"],
        name: "United Kingdom",
        g_per_kwh: 237.59,
    },
    CountryIntensity {
        alpha3: "IND",
        alpha2: &["IN"],
        name: "India",
        g_per_kwh: 713.44,
    },
    CountryIntensity {
        alpha3: "SWE",
        alpha2: &["SE"],
        name: "Sweden",
        g_per_kwh: 40.70,
    },
    CountryIntensity {
        alpha3: "USA",
        alpha2: &["US"],
        name: "United States",
        g_per_kwh: 369.47,
    },
];

/// Looks a country up by alpha-3 or alpha-2 code, case-insensitively.
pub fn lookup_country(code: &str) -> Result<&'static CountryIntensity, EnergyError> {
    let c = code.trim().to_ascii_uppercase();
    COUNTRIES
        .iter()
        .find(|row| row.alpha3 == c || row.alpha2.contains(&c.as_str()))
        .ok_or_else(|| EnergyError::UnknownCountry {
            code: code.to_string(),
            known: COUNTRIES
                .iter()
                .map(|r| r.alpha3)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Emissions in kg CO2-eq for `energy_kwh` at data-centre overhead `pue` and grid intensity
/// `g_per_kwh`.
pub fn emissions_kg(energy_kwh: f64, pue: f64, g_per_kwh: f64) -> f64 {
    energy_kwh * pue * g_per_kwh / 1000.0
}

/// Checks a PUE: finite and at least 1.0 (a facility cannot use less than its IT load).
pub fn validate_pue(pue: f64) -> Result<(), EnergyError> {
    if pue.is_finite() && pue >= 1.0 {
        Ok(())
    } else {
        Err(EnergyError::Invalid {
            field: "pue".into(),
            value: pue.to_string(),
            expected: "expected a power usage effectiveness >= 1.0 (1.0 = no facility overhead)"
                .into(),
        })
    }
}

/// Checks a carbon intensity: finite and non-negative.
pub fn validate_intensity(g_per_kwh: f64) -> Result<(), EnergyError> {
    if g_per_kwh.is_finite() && g_per_kwh >= 0.0 {
        Ok(())
    } else {
        Err(EnergyError::Invalid {
            field: "intensity_g_per_kwh".into(),
            value: g_per_kwh.to_string(),
            expected: "expected a carbon intensity >= 0 g CO2-eq/kWh".into(),
        })
    }
}

/// The resolved carbon parameters every record of a tracker uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Carbon {
    /// g CO2-eq per kWh.
    pub intensity_g_per_kwh: f64,
    /// Power usage effectiveness (>= 1.0).
    pub pue: f64,
    /// ISO alpha-3 code when a country was configured.
    pub country_iso_code: Option<String>,
    /// Country name from the table when a country was configured.
    pub country_name: Option<String>,
    /// Where the intensity came from ("config", "table: DEU", "world average").
    pub intensity_origin: String,
}

impl Default for Carbon {
    fn default() -> Self {
        Carbon {
            intensity_g_per_kwh: WORLD_AVERAGE_G_PER_KWH,
            pue: 1.0,
            country_iso_code: None,
            country_name: None,
            intensity_origin: "world average".into(),
        }
    }
}

impl Carbon {
    /// Resolves country / explicit intensity / PUE: an explicit intensity wins over the
    /// country's table figure (the country is still recorded); neither gives the world average.
    pub fn resolve(
        country: Option<&str>,
        intensity_g_per_kwh: Option<f64>,
        pue: f64,
    ) -> Result<Carbon, EnergyError> {
        validate_pue(pue)?;
        let row = country.map(lookup_country).transpose()?;
        let (intensity, origin) = match (intensity_g_per_kwh, row) {
            (Some(g), _) => {
                validate_intensity(g)?;
                (g, "config".to_string())
            }
            (None, Some(r)) => (r.g_per_kwh, format!("table: {}", r.alpha3)),
            (None, None) => (WORLD_AVERAGE_G_PER_KWH, "world average".to_string()),
        };
        Ok(Carbon {
            intensity_g_per_kwh: intensity,
            pue,
            country_iso_code: row.map(|r| r.alpha3.to_string()),
            country_name: row.map(|r| r.name.to_string()),
            intensity_origin: origin,
        })
    }

    /// Emissions (kg CO2-eq) of `energy_kwh` under these parameters.
    pub fn emissions_kg(&self, energy_kwh: f64) -> f64 {
        emissions_kg(energy_kwh, self.pue, self.intensity_g_per_kwh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_kwh_germany_pue_1_5() {
        // 2 x 1.5 x 380.95 / 1000 = 1.14285 kg
        assert!((emissions_kg(2.0, 1.5, 380.95) - 1.14285).abs() < 1e-12);
        let c = Carbon::resolve(Some("deu"), None, 1.5).unwrap();
        assert!((c.emissions_kg(2.0) - 1.14285).abs() < 1e-12);
        assert_eq!(c.country_iso_code.as_deref(), Some("DEU"));
        assert_eq!(c.intensity_origin, "table: DEU");
    }

    #[test]
    fn alpha2_and_uk() {
        assert_eq!(lookup_country("FR").unwrap().g_per_kwh, 56.04);
        assert_eq!(lookup_country("uk").unwrap().alpha3, "GBR");
        assert_eq!(lookup_country("GB").unwrap().alpha3, "GBR");
    }

    #[test]
    fn explicit_intensity_wins_and_default_is_world() {
        let c = Carbon::resolve(Some("SWE"), Some(12.5), 1.0).unwrap();
        assert_eq!(c.intensity_g_per_kwh, 12.5);
        assert_eq!(c.country_name.as_deref(), Some("Sweden"));
        let w = Carbon::resolve(None, None, 1.0).unwrap();
        assert_eq!(w.intensity_g_per_kwh, 475.0);
        assert_eq!(w, Carbon::default());
    }

    #[test]
    fn bad_values_name_themselves() {
        let e = Carbon::resolve(None, None, 0.9).unwrap_err().to_string();
        assert!(e.contains("pue = 0.9") && e.contains(">= 1.0"), "{e}");
        let e = Carbon::resolve(None, Some(-3.0), 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("intensity_g_per_kwh = -3"), "{e}");
        let e = Carbon::resolve(Some("XYZ"), None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"XYZ\"") && e.contains("DEU"), "{e}");
    }
}
