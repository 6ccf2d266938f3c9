//! The unprivileged host: what `wprobe` runs besides the core — the
//! plugin runtime, and the service (`wprobe serve`).

pub mod plugin;
pub mod serve;
