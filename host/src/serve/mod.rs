//! `wprobe serve`: the service that makes probes manageable from a browser
//! and from scripts (DESIGN.md, "Host service"). Today it has its
//! foundation: the bearer token and the Host/Origin checks, the SQLite
//! store, plugin uploads with versions, the OpenAPI document, and targets:
//! a core of its own (or `--core SOCKET`) that attaches to and spawns
//! processes ([`targets`]). Probes, events and metrics come next.
//!
//! The key decision: the service is a function, [`app`], of its state, and
//! the routes are listed once, in [`routes`], from which both the router
//! and [`route_table`] (what the OpenAPI test compares against) are made.

mod api;
mod auth;
mod error;
pub mod store;
mod targets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use clap::Args;

use crate::plugin::{Limits, Runtime};
use store::Store;

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
    /// The thread that talks to wprobe-core.
    pub core: targets::Core,
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

/// The Host headers a request may carry for a service bound to `addr`.
fn accepted_hosts(addr: SocketAddr) -> Vec<String> {
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{}", addr.port()));
    }
    hosts
}

/// Runs `wprobe serve` until SIGINT or SIGTERM; the exit code.
pub fn main(args: ServeArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wprobe serve: {e}");
            1
        }
    }
}

fn run(args: ServeArgs) -> Result<(), String> {
    let dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    make_data_dir(&dir)?;
    let token = auth::load_or_create_token(&dir)?;
    let store = Arc::new(Mutex::new(Store::open(&dir.join("wprobe.db"))?));
    let name = format!("wprobe serve {}", std::process::id());
    let client = match &args.core {
        Some(socket) => wprobe_core::proto::Client::connect(socket, &name),
        None => wprobe_core::proto::Client::start_core(&targets::core_binary(), &name),
    }
    .map_err(|e| format!("wprobe-core: {e}"))?;
    let core = targets::Core::start(client, store.clone());
    let runtime = Runtime::new(Limits {
        module_bytes: args.max_upload,
        ..Limits::default()
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        let state = AppState {
            hosts: Arc::new(accepted_hosts(addr)),
            token: Arc::new(token.clone()),
            store,
            runtime: Arc::new(runtime),
            max_upload: args.max_upload,
            max_body: args.max_body,
            core,
        };
        // The token goes in the fragment, which browsers never send.
        println!("http://{addr}/#token={token}");
        eprintln!("wprobe serve: data in {}", dir.display());
        axum::serve(listener, app(state))
            .with_graceful_shutdown(shutdown())
            .await
            .map_err(|e| format!("serving on {addr}: {e}"))
    })
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
    }

    #[test]
    fn hosts() {
        let a: SocketAddr = "127.0.0.1:7878".parse().expect("addr");
        assert_eq!(accepted_hosts(a), ["127.0.0.1:7878", "localhost:7878"]);
        let b: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        assert_eq!(accepted_hosts(b), ["10.0.0.1:80"]);
    }
}
