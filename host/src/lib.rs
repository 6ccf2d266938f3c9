//! The unprivileged host: what `wprobe` runs besides the core — today the
//! plugin runtime.

pub mod plugin;
