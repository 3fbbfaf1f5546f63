//! The run configuration file (TOML): which data, which DSNN, how long, where energy comes
//! from. Unknown keys and wrong types are errors that name the file, line and key;
//! `--set key=value` overrides any key from the command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::energy::EnergyConfig;
#[cfg(feature = "dsnn")]
use crate::train::TrainConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--set {arg}: {expected}")]
    Set { arg: String, expected: String },
}

fn d_epochs() -> usize {
    1
}
fn d_device() -> String {
    "cpu".into()
}

/// `[data]`, `[train]` (the trial's hyperparameters), `[energy]`, and run settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Free-form name, used for run directories and records.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub data: DataConfig,
    #[cfg(feature = "dsnn")]
    #[serde(default)]
    pub train: TrainConfig,
    /// Without burn the training section is kept as plain TOML.
    #[cfg(not(feature = "dsnn"))]
    #[serde(default)]
    pub train: Option<toml::Table>,
    #[serde(default)]
    pub energy: EnergyConfig,
    /// Epochs for `dsnn-hpo train`.
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    /// cpu, wgpu, wgpu:N, vulkan, vulkan:N or cuda:N.
    #[serde(default = "d_device")]
    pub device: String,
}

impl RunConfig {
    /// Reads `path` and applies `sets` (each `key=value`, dotted keys for sections:
    /// `train.lr=0.05`, `data.path=/data/cifar`, `epochs=3`).
    pub fn load(path: &Path, sets: &[String]) -> Result<RunConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_with_sets(&text, path, sets)
    }

    pub fn from_str_with_sets(
        text: &str,
        path: &Path,
        sets: &[String],
    ) -> Result<RunConfig, ConfigFileError> {
        let parse_err = |e: toml::de::Error| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        // Parsed once as written, so that mistakes in the file are reported with their line.
        let cfg: RunConfig = toml::from_str(text).map_err(parse_err)?;
        if sets.is_empty() {
            return cfg.validated(path);
        }
        let mut doc: toml::Table = toml::from_str(text).map_err(parse_err)?;
        for arg in sets {
            apply_set(&mut doc, arg)?;
        }
        let cfg: RunConfig = RunConfig::deserialize(toml::Value::Table(doc)).map_err(|e| {
            ConfigFileError::Parse {
                path: path.to_path_buf(),
                message: format!("after --set: {}", e.to_string().trim_end()),
            }
        })?;
        cfg.validated(path)
    }

    fn validated(self, path: &Path) -> Result<RunConfig, ConfigFileError> {
        let fail = |message: String| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message,
        };
        self.data.validate().map_err(|e| fail(e.to_string()))?;
        self.energy.validate().map_err(|e| fail(e.to_string()))?;
        #[cfg(feature = "dsnn")]
        self.train
            .validate()
            .map_err(|e| fail(format!("[train] {e}")))?;
        if self.epochs == 0 {
            return Err(fail("epochs = 0: expected a positive integer".into()));
        }
        Ok(self)
    }
}

/// Sets a dotted key in a TOML table. The value is read as TOML (numbers, booleans, quoted
/// strings, arrays); anything else is taken as a plain string, so `data.path=/x/y` works.
pub fn apply_set(doc: &mut toml::Table, arg: &str) -> Result<(), ConfigFileError> {
    let fail = |expected: &str| ConfigFileError::Set {
        arg: arg.to_string(),
        expected: expected.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| fail("expected key=value, e.g. train.lr=0.05"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(fail("expected a key such as epochs or train.lr"));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let (last, sections) = parts
        .split_last()
        .ok_or_else(|| fail("expected a key such as epochs or train.lr"))?;
    let mut table = doc;
    for section in sections {
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(fail(&format!("'{section}' is a value, not a section"))),
        };
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_overrides_nested_keys_and_types() {
        let mut doc: toml::Table = toml::from_str("epochs = 1\n[train]\nlr = 0.1\n").unwrap();
        apply_set(&mut doc, "train.lr=0.05").unwrap();
        apply_set(&mut doc, "epochs=3").unwrap();
        apply_set(&mut doc, "data.path=/tmp/x y").unwrap();
        assert_eq!(doc["train"]["lr"].as_float(), Some(0.05));
        assert_eq!(doc["epochs"].as_integer(), Some(3));
        assert_eq!(doc["data"]["path"].as_str(), Some("/tmp/x y"));
        assert!(apply_set(&mut doc, "epochs").is_err());
        assert!(apply_set(&mut doc, "epochs.x=1").is_err());
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let e = RunConfig::from_str_with_sets("epochs = 2\nepoch = 3\n", Path::new("a.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.toml") && e.contains("line 2") && e.contains("epoch"),
            "{e}"
        );
        let e = RunConfig::from_str_with_sets("epochs = \"two\"\n", Path::new("b.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml") && e.contains("line 1"), "{e}");
        let e = RunConfig::from_str_with_sets("", Path::new("c.toml"), &["epochs=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs = 0"), "{e}");
    }
}
