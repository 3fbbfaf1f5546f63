//! The energy record of one measured window (or of one op-count pass), serializable to JSON and
//! written to the CodeCarbon-style CSV by [`super::emissions_csv`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::carbon::Carbon;
use super::host::HostInfo;
use super::{J_PER_KWH, SourceKind};

/// Energy of one component over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentEnergy {
    /// Where the number came from (`none` when the component was not measured).
    pub source: SourceKind,
    /// Joules.
    pub energy_j: f64,
    /// Kilowatt-hours (`energy_j / 3.6e6`).
    pub energy_kwh: f64,
    /// Mean power over the window, watts (0 for a zero-length window).
    pub power_w: f64,
}

impl ComponentEnergy {
    /// From joules over `duration_s` seconds.
    pub fn new(source: SourceKind, energy_j: f64, duration_s: f64) -> ComponentEnergy {
        ComponentEnergy {
            source,
            energy_j,
            energy_kwh: energy_j / J_PER_KWH,
            power_w: if duration_s > 0.0 {
                energy_j / duration_s
            } else {
                0.0
            },
        }
    }
}

/// Energy and emissions of one named window.
///
/// Energies are as measured (IT energy); the PUE is applied to emissions only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnergyRecord {
    /// Phase name given to `start` ("train", "inference", ...).
    pub phase: String,
    /// Start of the window, RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    /// Start of the window, seconds since the Unix epoch.
    pub start_unix_s: f64,
    /// Window length, seconds.
    pub duration_s: f64,
    pub cpu: ComponentEnergy,
    pub gpu: ComponentEnergy,
    pub ram: ComponentEnergy,
    /// cpu + gpu + ram, joules.
    pub energy_j: f64,
    /// cpu + gpu + ram, kWh.
    pub energy_kwh: f64,
    /// kg CO2-eq (`energy_kwh x pue x intensity / 1000`).
    pub emissions_kg: f64,
    /// kg CO2-eq per second of window (0 for a zero-length window).
    pub emissions_rate_kg_per_s: f64,
    /// Grid intensity used, g CO2-eq/kWh.
    pub intensity_g_per_kwh: f64,
    /// Power usage effectiveness used.
    pub pue: f64,
    pub country_iso_code: Option<String>,
    pub country_name: Option<String>,
    pub cpu_model: String,
    pub cpu_count: usize,
    /// Names of the measured GPUs.
    pub gpu_models: Vec<String>,
    /// Total RAM of the machine, GiB.
    pub ram_total_gib: f64,
    /// When trials ran concurrently (`--workers`), the share of the window's measured energy
    /// given to this record: the trial's CPU time over the process's in the window. Absent
    /// when the window had the process to itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// For a repeated measurement (see [`super::repeat`]), the statistics of its passes; the
    /// record's energy is then that of all passes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<super::repeat::RepeatStats>,
}

impl EnergyRecord {
    /// Builds a record from per-component joules `[cpu, gpu, ram]`.
    pub fn new(
        phase: &str,
        start: SystemTime,
        duration_s: f64,
        [cpu, gpu, ram]: [ComponentEnergy; 3],
        carbon: &Carbon,
        host: &HostInfo,
    ) -> EnergyRecord {
        let energy_j = cpu.energy_j + gpu.energy_j + ram.energy_j;
        let energy_kwh = energy_j / J_PER_KWH;
        let emissions_kg = carbon.emissions_kg(energy_kwh);
        EnergyRecord {
            phase: phase.to_string(),
            timestamp: rfc3339_utc(start),
            start_unix_s: start
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            duration_s,
            cpu,
            gpu,
            ram,
            energy_j,
            energy_kwh,
            emissions_kg,
            emissions_rate_kg_per_s: if duration_s > 0.0 {
                emissions_kg / duration_s
            } else {
                0.0
            },
            intensity_g_per_kwh: carbon.intensity_g_per_kwh,
            pue: carbon.pue,
            country_iso_code: carbon.country_iso_code.clone(),
            country_name: carbon.country_name.clone(),
            cpu_model: host.cpu_model.clone(),
            cpu_count: host.cpu_count,
            gpu_models: host.gpu_models.clone(),
            ram_total_gib: host.ram_total_gib,
            share: None,
            repeat: None,
        }
    }

    /// A record of nothing measured (every source `none`), for combining and tests.
    pub fn empty(phase: &str) -> EnergyRecord {
        EnergyRecord::new(
            phase,
            UNIX_EPOCH,
            0.0,
            Default::default(),
            &Carbon::default(),
            &HostInfo::default(),
        )
    }

    /// The energy of one pass: the mean of a repeated measurement, else the whole record.
    pub fn pass_kwh(&self) -> f64 {
        self.repeat
            .as_ref()
            .map_or(self.energy_kwh, super::repeat::RepeatStats::mean_kwh)
    }

    /// The energy of one pass in joules (see [`EnergyRecord::pass_kwh`]).
    pub fn pass_j(&self) -> f64 {
        self.repeat.as_ref().map_or(self.energy_j, |r| r.mean_j)
    }

    /// Emissions of one pass, at this record's intensity and PUE.
    pub fn pass_kg(&self) -> f64 {
        match &self.repeat {
            Some(r) => {
                super::carbon::emissions_kg(r.mean_kwh(), self.pue, self.intensity_g_per_kwh)
            }
            None => self.emissions_kg,
        }
    }

    /// This record scaled to `share` (0..=1) of its energy and emissions, as attributed to one
    /// of several trials that shared the machine during the window.
    pub fn scaled(&self, share: f64) -> EnergyRecord {
        let share = share.clamp(0.0, 1.0);
        let part = |c: &ComponentEnergy| ComponentEnergy {
            energy_j: c.energy_j * share,
            energy_kwh: c.energy_kwh * share,
            power_w: c.power_w * share,
            ..c.clone()
        };
        EnergyRecord {
            cpu: part(&self.cpu),
            gpu: part(&self.gpu),
            ram: part(&self.ram),
            energy_j: self.energy_j * share,
            energy_kwh: self.energy_kwh * share,
            emissions_kg: self.emissions_kg * share,
            emissions_rate_kg_per_s: self.emissions_rate_kg_per_s * share,
            share: Some(share),
            ..self.clone()
        }
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds, e.g. `2023-11-14T22:13:20.000Z`.
///
/// Written by hand (days-to-civil conversion, H. Hinnant's algorithm) to avoid a date crate for
/// one format. Times before 1970 are clamped to the epoch.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// (year, month, day) of the proleptic Gregorian date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    #[test]
    fn known_timestamps() {
        assert_eq!(rfc3339_utc(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1700000000` = Tue Nov 14 22:13:20 UTC 2023
        assert_eq!(
            rfc3339_utc(at(1_700_000_000, 7)),
            "2023-11-14T22:13:20.007Z"
        );
        // leap day: 2000-02-29 is day 11016 after the epoch
        assert_eq!(
            rfc3339_utc(at(11_016 * 86_400 + 86_399, 999)),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_utc(at(11_017 * 86_400, 0)),
            "2000-03-01T00:00:00.000Z"
        );
        // 2024-12-31T23:59:59Z = 1735689599
        assert_eq!(
            rfc3339_utc(at(1_735_689_599, 0)),
            "2024-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn record_sums_and_emissions() {
        let carbon = Carbon::resolve(Some("DEU"), None, 1.5).unwrap();
        let r = EnergyRecord::new(
            "train",
            at(1_700_000_000, 0),
            100.0,
            [
                ComponentEnergy::new(SourceKind::Rapl, 3.6e6, 100.0),
                ComponentEnergy::new(SourceKind::Nvml, 3.6e6, 100.0),
                ComponentEnergy::new(SourceKind::Estimate, 0.0, 100.0),
            ],
            &carbon,
            &HostInfo::default(),
        );
        assert_eq!(r.energy_kwh, 2.0);
        assert_eq!(r.cpu.power_w, 36_000.0);
        assert!((r.emissions_kg - 1.14285).abs() < 1e-12);
        assert!((r.emissions_rate_kg_per_s - 0.0114285).abs() < 1e-12);
        assert_eq!(r.start_unix_s, 1.7e9);
    }
}
