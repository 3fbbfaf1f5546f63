//! dsnn-hpo: multi-fidelity, multi-objective hyperparameter optimization of Deep Shift Neural
//! Networks, trading validation loss against energy.
//!
//! Pure-Rust parts (no burn): [`arch`] (layer tables), [`shift`] settings and packed weights,
//! [`data`] readers and batching, [`energy`] meters, the optimizer ([`space`], [`opt`],
//! [`eval`]). Behind the default `dsnn` feature: the burn
//! shift layers, [`model`]s, [`device`]s and the [`train`]er.

pub mod arch;
pub mod constraint;
pub mod data;
pub mod energy;
pub mod eval;
pub mod opt;
pub mod report;
pub mod shift;
pub mod space;
pub mod store;

#[cfg(feature = "dsnn")]
pub mod device;
#[cfg(feature = "dsnn")]
pub mod model;
#[cfg(feature = "dsnn")]
pub mod par_buffer;
#[cfg(feature = "dsnn")]
pub mod progress;
#[cfg(feature = "dsnn")]
pub mod search;
#[cfg(feature = "dsnn")]
pub mod train;

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
