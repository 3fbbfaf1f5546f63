//! dsnn-hpo: multi-fidelity, multi-objective hyperparameter optimization of Deep Shift Neural
//! Networks, trading validation loss against energy.
//!
//! Pure-Rust parts (no burn): [`arch`] (layer tables), [`shift`] settings and packed weights.
//! Behind the default `dsnn` feature: the burn shift layers, [`model`]s and [`device`]s.

pub mod arch;
pub mod data;
pub mod energy;
pub mod shift;

#[cfg(feature = "dsnn")]
pub mod device;
#[cfg(feature = "dsnn")]
pub mod model;

pub mod cli;
pub mod commands;
pub mod error;
