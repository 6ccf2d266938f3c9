//! The unprivileged host: what `wprobe` runs besides the core — the
//! plugin runtime, the service (`wprobe serve`), its demo (`wprobe demo`),
//! and the automation CLI that drives it over REST (`wprobe
//! target|probe|plugin|events`).

pub mod cli;
pub mod demo;
pub mod json;
pub mod plugin;
pub mod serve;
