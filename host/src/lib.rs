//! The unprivileged host: what `wprobe` runs besides the core — the
//! plugin runtime, the service (`wprobe serve`), its demo (`wprobe demo`),
//! and the automation CLI that drives it over REST (`wprobe
//! target|probe|plugin|events`).

pub mod cli;
pub mod demo;
pub mod json;
pub mod plugin;
pub mod serve;

/// The `wprobe-core` binary: `$WPROBE_CORE`, else the one beside this
/// executable, else the one in `PATH`.
pub fn core_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("WPROBE_CORE") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("wprobe-core"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "wprobe-core".into())
}

#[cfg(test)]
mod props;
