//! dsnn-hpo: multi-fidelity, multi-objective hyperparameter optimization of Deep Shift Neural Networks.
pub mod eval;
pub mod opt;
pub mod space;
