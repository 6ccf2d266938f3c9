//! `wprobe serve`: the service that makes probes manageable from a browser
//! and from scripts (docs/design.md, "Host service"): the bearer token and the
//! Host/Origin checks ([`auth`]), the SQLite store ([`store`]), plugin
//! uploads with versions, targets with a core connection each and their
//! probes with plugins ([`targets`], [`probes`]), live events over SSE and
//! a bounded history ([`events`]), `/metrics` and the plugins' maps
//! ([`metrics`]), symbols and disassembly of a target ([`symbols`]), and
//! the OpenAPI document.
//!
//! The key decision: the service is a function, [`app`], of its state, and
//! the routes are listed once, in [`routes`], from which both the router
//! and [`route_table`] (what the OpenAPI test compares against) are made.

mod api;
mod auth;
mod core;
mod error;
mod events;
mod http;
mod metrics;
mod probes;
pub mod store;
mod symbols;
mod targets;
mod ui;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;
use clap::Args;

use crate::plugin::{Limits, Runtime};
use events::Bus;
use store::Store;
use targets::Targets;

pub use api::ApiDoc;

/// `wprobe serve`'s options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on (host:port). Port 0 picks a free port; the
    /// URL printed at start-up has the real one.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Where the token and the database live; default
    /// $XDG_DATA_HOME/wprobe, else ~/.local/share/wprobe.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The largest plugin module accepted, in bytes (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_upload: usize,
    /// The largest request body of any other route, in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Use the wprobe-core listening on this socket instead of starting
    /// one (same-user mode) of its own.
    #[arg(long, value_name = "SOCKET")]
    pub core: Option<PathBuf>,
    /// The most probes one target may have (422 beyond).
    #[arg(long, default_value_t = 64)]
    pub max_probes_per_target: usize,
    /// The most event streams (GET /api/events) open at once (429 beyond).
    #[arg(long, default_value_t = 16)]
    pub max_sse_clients: usize,
    /// How many recent events GET /api/events.jsonl keeps.
    #[arg(long, default_value_t = 10_000)]
    pub retain_events: usize,
    /// How many events an event-stream client may fall behind before it
    /// loses the oldest (and is told so).
    #[arg(long, default_value_t = 4096)]
    pub sse_buffer: usize,
    /// How long, in seconds, one request to wprobe-core may take. A
    /// target whose core connection does not answer in time (or fails) is
    /// "lost": its connection is closed, which makes the core let it go,
    /// and every later request about it is answered at once.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    pub core_timeout: f64,
    /// How long, in seconds, a client may take to send a request's head,
    /// counted from the connection's start or the previous answer: a
    /// half-sent request or an idle keep-alive connection is closed then.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    pub header_timeout: f64,
    /// The most HTTP connections served at once; past it a connection is
    /// answered 503 and closed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// The most plugins one probe may have (422 beyond).
    #[arg(long, default_value_t = 8)]
    pub max_attachments_per_probe: usize,
    /// Keep every probe on `int3` (a trap per hit) instead of a jump into
    /// a trampoline that writes the hit into shared memory.
    #[arg(long)]
    pub no_optimize: bool,
    /// The memory, in bytes, that all plugin instances together may grow
    /// to: each counts for its memory cap (64 MiB), so the default allows
    /// 32 instances (422 beyond).
    #[arg(long, default_value_t = 2 << 30)]
    pub plugin_memory_budget: usize,
    /// The memory, in MiB, that compiling one uploaded plugin may take (it
    /// is compiled in a child process with this limit; a module that needs
    /// more is refused with 422).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub plugin_compile_memory: u64,
    /// A further name (without port) that requests may give as their Host,
    /// e.g. the name a listen address of 0.0.0.0 is reached by; repeatable.
    /// The listen address, and on 0.0.0.0 the machine's name and
    /// addresses, are always accepted.
    #[arg(long, value_name = "NAME")]
    pub allow_host: Vec<String>,
}

/// A number of seconds above zero, for the timeout options.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e9 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds above 0")),
    }
}

impl ServeArgs {
    /// The defaults, on `listen`, with the data in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> ServeArgs {
        ServeArgs {
            listen,
            data_dir: Some(data_dir),
            max_upload: 8 << 20,
            max_body: 1 << 20,
            core: None,
            max_probes_per_target: 64,
            max_sse_clients: 16,
            retain_events: 10_000,
            sse_buffer: 4096,
            core_timeout: 10.0,
            header_timeout: 10.0,
            max_connections: 256,
            max_attachments_per_probe: 8,
            no_optimize: false,
            plugin_memory_budget: 2 << 30,
            plugin_compile_memory: 512,
            allow_host: Vec::new(),
        }
    }
}

/// What every route shares.
#[derive(Clone)]
pub struct AppState {
    /// The accepted Host headers: the listen address first.
    pub hosts: Arc<Vec<String>>,
    pub token: Arc<String>,
    pub store: Arc<Mutex<Store>>,
    pub runtime: Arc<Runtime>,
    pub max_upload: usize,
    pub max_body: usize,
    /// The targets, their core connections and their probes.
    pub targets: Arc<Targets>,
    pub bus: Arc<Bus>,
}

impl AppState {
    /// The store, under its lock (a panic elsewhere does not make it
    /// unusable: every write is one transaction).
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One route: its method and path as the OpenAPI document names them,
/// whether it needs the token, and its handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub public: bool,
    handler: MethodRouter<AppState>,
}

/// Every route of the service, the one list of them.
pub fn routes(max_upload: usize) -> Vec<Route> {
    let r = |method, path, public, handler| Route {
        method,
        path,
        public,
        handler,
    };
    vec![
        r("GET", "/api/health", true, get(api::health)),
        r("GET", "/api/openapi.json", false, get(api::openapi_json)),
        r(
            "POST",
            "/api/plugins",
            false,
            post(api::upload_plugin).layer(DefaultBodyLimit::max(max_upload)),
        ),
        r("GET", "/api/plugins", false, get(api::list_plugins)),
        r("GET", "/api/plugins/{id}", false, get(api::get_plugin)),
        r(
            "DELETE",
            "/api/plugins/{id}",
            false,
            delete(api::delete_plugin),
        ),
        r("GET", "/api/processes", false, get(api::list_processes)),
        r("POST", "/api/targets", false, post(api::add_target)),
        r("GET", "/api/targets", false, get(api::list_targets)),
        r("GET", "/api/targets/{id}", false, get(api::get_target)),
        r(
            "DELETE",
            "/api/targets/{id}",
            false,
            delete(api::delete_target),
        ),
        r(
            "GET",
            "/api/targets/{id}/symbols",
            false,
            get(symbols::symbols),
        ),
        r(
            "GET",
            "/api/targets/{id}/disasm",
            false,
            get(symbols::disasm),
        ),
        r("POST", "/api/probes", false, post(probes::create_probe)),
        r(
            "POST",
            "/api/probes/batch",
            false,
            post(probes::create_batch),
        ),
        r("GET", "/api/probes", false, get(probes::list_probes)),
        r("GET", "/api/probes/{id}", false, get(probes::get_probe)),
        r(
            "PATCH",
            "/api/probes/{id}",
            false,
            patch(probes::patch_probe),
        ),
        r(
            "DELETE",
            "/api/probes/{id}",
            false,
            delete(probes::delete_probe),
        ),
        r("GET", "/api/events", false, get(events::events)),
        r("GET", "/api/events.jsonl", false, get(events::events_jsonl)),
        r(
            "GET",
            "/api/aggregations",
            false,
            get(metrics::aggregations),
        ),
        r("GET", "/metrics", false, get(metrics::metrics)),
    ]
}

/// The (method, path) of every route, as served.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    routes(0).iter().map(|r| (r.method, r.path)).collect()
}

/// The service as a router.
pub fn app(state: AppState) -> Router {
    let mut public = Router::new();
    let mut private = Router::new();
    for route in routes(state.max_upload) {
        if route.public {
            public = public.route(route.path, route.handler);
        } else {
            private = private.route(route.path, route.handler);
        }
    }
    let private = private.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    public
        .merge(private)
        .merge(ui::router())
        .layer(DefaultBodyLimit::max(state.max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::check_host_origin,
        ))
        .with_state(state)
}

fn default_data_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("wprobe"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/wprobe")),
        None => Err("neither XDG_DATA_HOME nor HOME is set: give --data-dir".into()),
    }
}

fn make_data_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating the data directory {}: {e}", dir.display()))
}

/// The Host headers a request may carry for a service bound to `addr`:
/// the address itself; `localhost` on loopback; on an unspecified address
/// (0.0.0.0, ::) the machine's host name and every address of its
/// interfaces; and each of `allowed` (`--allow-host`), all with the port.
fn accepted_hosts(addr: SocketAddr, allowed: &[String]) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        hosts.push(format!("localhost:{port}"));
    }
    if addr.ip().is_unspecified() {
        hosts.extend(host_name().map(|n| format!("{n}:{port}")));
        hosts.extend(
            interface_addresses()
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port).to_string()),
        );
    }
    hosts.extend(allowed.iter().map(|n| format!("{n}:{port}")));
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert(h.clone()));
    hosts
}

/// This machine's host name (gethostname).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..end]).ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The IPv4 and IPv6 addresses of this machine's interfaces (getifaddrs).
fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet
        // freed; its `ifa_addr` is null or points to a sockaddr of the
        // family it names.
        unsafe {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(a as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::from(
                            u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(a as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// Runs `wprobe serve` until SIGINT or SIGTERM; the exit code.
pub fn main(args: ServeArgs) -> i32 {
    match run(args, |_| Ok(())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wprobe serve: {e}");
            1
        }
    }
}

/// The service once it listens: where, with which token.
pub struct Listening {
    pub addr: SocketAddr,
    pub token: String,
    pub data_dir: PathBuf,
}

impl Listening {
    /// The URL to open, the token in its fragment (which browsers never
    /// send).
    pub fn url(&self) -> String {
        format!("http://{}/#token={}", self.addr, self.token)
    }
}

/// Runs the service until SIGINT or SIGTERM. `ready` runs on a thread of
/// its own once the service listens (`wprobe demo` sets up its workload
/// there, over the REST API); an error from it stops the service.
///
/// Call it from the main thread: the core it starts is told to end when
/// the thread that started it ends (PR_SET_PDEATHSIG), so that a killed
/// service never leaves a core holding its targets.
pub fn run(
    args: ServeArgs,
    ready: impl FnOnce(&Listening) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    make_data_dir(&dir)?;
    error::set_data_dir(&dir);
    let token = auth::load_or_create_token(&dir)?;
    let store = Arc::new(Mutex::new(Store::open(&dir.join("wprobe.db"))?));
    let link = match &args.core {
        Some(socket) => core::CoreLink::external(socket)?,
        None => core::CoreLink::start(&crate::core_binary(), &dir.join("core.sock"))?,
    };
    let defaults = Limits::default();
    // Test-only (docs/core-protocol.md, beside the core's own): a host
    // function that panics whenever a plugin calls it.
    let host_panic = std::env::var(crate::plugin::FAULT_INJECTION)
        .ok()
        .filter(|name| !name.is_empty());
    let limits = Limits {
        module_bytes: args.max_upload,
        host_panic,
        compile: crate::plugin::CompileLimits {
            memory_bytes: args.plugin_compile_memory.saturating_mul(1 << 20),
            ..defaults.compile
        },
        ..defaults
    };
    let memory = targets::MemoryBudget::new(args.plugin_memory_budget, limits.memory_bytes);
    let runtime = Arc::new(Runtime::new(limits)?);
    if let Some(name) = &runtime.limits.host_panic {
        eprintln!(
            "wprobe serve: {}={name}: every call of wprobe.{name} by a plugin panics (fault \
             injection for tests)",
            crate::plugin::FAULT_INJECTION
        );
    }
    let bus = Arc::new(Bus::new(
        args.sse_buffer,
        args.retain_events,
        args.max_sse_clients,
    ));
    let targets = Arc::new(Targets::new(
        link,
        store.clone(),
        runtime.clone(),
        bus.clone(),
        targets::Caps {
            max_probes: args.max_probes_per_target,
            core_timeout: std::time::Duration::from_secs_f64(args.core_timeout),
            max_attachments: args.max_attachments_per_probe,
            no_optimize: args.no_optimize,
            memory,
        },
    ));
    targets.restore();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        let state = AppState {
            hosts: Arc::new(accepted_hosts(addr, &args.allow_host)),
            token: Arc::new(token.clone()),
            store,
            runtime,
            max_upload: args.max_upload,
            max_body: args.max_body,
            targets: targets.clone(),
            bus,
        };
        let listening = Listening {
            addr,
            token,
            data_dir: dir.clone(),
        };
        println!("{}", listening.url());
        eprintln!("wprobe serve: data in {}", dir.display());
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        std::thread::spawn(move || {
            if let Err(e) = ready(&listening) {
                let _ = failed_tx.send(e);
            }
        });
        let failed = async move {
            match failed_rx.await {
                Ok(e) => e,
                // Set up fine: wait for a signal only.
                Err(_) => std::future::pending().await,
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<String>();
        let signal = async move {
            tokio::select! {
                _ = shutdown() => {}
                e = failed => { let _ = stop_tx.send(e); }
            }
        };
        let limits = http::Limits {
            header_timeout: std::time::Duration::from_secs_f64(args.header_timeout),
            max_connections: args.max_connections as usize,
        };
        http::serve(listener, app(state), limits, signal).await;
        match stop_rx.await {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    });
    // Every target let go, restored, before the service exits.
    targets.shutdown();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use utoipa::OpenApi;

    /// Every served route is documented, and every documented one served.
    #[test]
    fn openapi_matches_routes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<_> = route_table()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served);
        // A path parameter is in its path; everything else is a query.
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let name = p["name"].as_str().expect("name");
                    let in_path = path.contains(&format!("{{{name}}}"));
                    assert_eq!(p["in"] == "path", in_path, "{method} {path}: {p}");
                }
            }
        }
    }

    #[test]
    fn hosts() {
        let a: SocketAddr = "127.0.0.1:7878".parse().expect("addr");
        assert_eq!(accepted_hosts(a, &[]), ["127.0.0.1:7878", "localhost:7878"]);
        let b: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let named = ["probe.example".to_string()];
        assert_eq!(
            accepted_hosts(b, &named),
            ["10.0.0.1:80", "probe.example:80"]
        );
        // On every address: the machine's names and addresses.
        let any: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        let hosts = accepted_hosts(any, &[]);
        for want in ["0.0.0.0:80", "localhost:80", "127.0.0.1:80"] {
            assert!(hosts.iter().any(|h| h == want), "{want} in {hosts:?}");
        }
        if let Some(name) = host_name() {
            assert!(hosts.contains(&format!("{name}:80")), "{hosts:?}");
        }
    }
}
