//! The automation CLI: `wprobe target|probe|plugin|events`, a client of a
//! running `wprobe serve` over its REST API.
//!
//! The key decision: the CLI holds no state and knows nothing the API does
//! not say. Every subcommand is one request (or one per id) made with
//! [`Api`], whose answer is printed as a compact table, or as the API's
//! JSON with `--json`; every refusal is the API's own message with its HTTP
//! status. [`Api`] is public so that other commands (`wprobe demo`) drive
//! the service the same way.
//!
//! Where the service is and how to authenticate: `--url` (else
//! `$WPROBE_URL`, else http://127.0.0.1:7878; the URL `wprobe serve`
//! prints, with its `#token=` fragment, works as it is), `--token` (else
//! the URL's fragment, else `$WPROBE_TOKEN`, else the file `token` in
//! `--data-dir`, whose default is serve's: $XDG_DATA_HOME/wprobe, else
//! ~/.local/share/wprobe).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// The service's address when neither `--url` nor `$WPROBE_URL` gives one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";

// --- The client ----------------------------------------------------------

/// A client of the service's REST API: its base URL (no trailing slash)
/// and bearer token. Each method returns the answer's JSON (`Null` for an
/// empty answer, such as a 204), or a message that says what went wrong
/// and what to do.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    pub token: String,
}

impl Api {
    pub fn new(url: &str, token: &str) -> Api {
        Api {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        self.request("GET", path, None)
    }

    /// POSTs `body` as JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.request("POST", path, Some(("application/json", json_bytes(body))))
    }

    /// POSTs raw bytes with a content type (a plugin module:
    /// `application/wasm`).
    pub fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value, String> {
        self.request("POST", path, Some((content_type, body)))
    }

    /// PATCHes with `body` as JSON.
    pub fn patch(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.request("PATCH", path, Some(("application/json", json_bytes(body))))
    }

    pub fn delete(&self, path: &str) -> Result<Value, String> {
        self.request("DELETE", path, None)
    }

    /// Uploads a plugin module (binary or text WebAssembly), as a new
    /// version when `name` (default: the manifest's name) exists.
    pub fn upload_plugin(&self, module: Vec<u8>, name: Option<&str>) -> Result<Value, String> {
        let path = match name {
            Some(n) => format!("/api/plugins?name={}", percent_encode(n)),
            None => "/api/plugins".to_string(),
        };
        self.post_bytes(&path, "application/wasm", module)
    }

    /// Follows a Server-Sent Events stream (`/api/events?...`), calling
    /// `on_event` with each event until it returns false or the service
    /// ends the stream (then Ok).
    pub fn follow_events(
        &self,
        path: &str,
        mut on_event: impl FnMut(SseEvent) -> bool,
    ) -> Result<(), String> {
        // No timeout but the connection's: a quiet stream is no error.
        let response = self
            .agent(None)
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", "text/event-stream")
            .call()
            .map_err(|e| self.transport_error("GET", path, e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.into_body().read_to_string().unwrap_or_default();
            return Err(status_error(
                status.as_u16(),
                status.canonical_reason(),
                &text,
            ));
        }
        let mut reader = BufReader::new(response.into_body().into_reader());
        let mut parser = SseParser::default();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("reading the event stream from {}: {e}", self.url))?;
            if n == 0 {
                return Ok(());
            }
            if let Some(event) = parser.line(&line) {
                if !on_event(event) {
                    return Ok(());
                }
            }
        }
    }

    fn agent(&self, timeout: Option<Duration>) -> ureq::Agent {
        ureq::Agent::config_builder()
            // The API's error bodies are read, not turned into errors.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(timeout)
            .build()
            .into()
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, String> {
        // Generous: attaching to or spawning a process, or placing many
        // probes, takes a while; a service that hangs still ends the wait.
        let agent = self.agent(Some(Duration::from_secs(120)));
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            ("POST", None) => agent.post(&url).header("Authorization", &auth).send_empty(),
            ("POST", Some((ct, bytes))) => agent
                .post(&url)
                .header("Authorization", &auth)
                .content_type(ct)
                .send(&bytes[..]),
            ("PATCH", Some((ct, bytes))) => agent
                .patch(&url)
                .header("Authorization", &auth)
                .content_type(ct)
                .send(&bytes[..]),
            (m, _) => return Err(format!("{m} {path}: not a request this client makes")),
        };
        let response = result.map_err(|e| self.transport_error(method, path, e))?;
        let status = response.status();
        let text = response
            .into_body()
            .read_to_string()
            .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        if !status.is_success() {
            return Err(status_error(
                status.as_u16(),
                status.canonical_reason(),
                &text,
            ));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| format!("{method} {path}: the answer is not JSON ({e}): {text}"))
    }

    /// A failure to talk to the service at all.
    fn transport_error(&self, method: &str, path: &str, e: ureq::Error) -> String {
        let refused = match &e {
            ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
            ureq::Error::ConnectionFailed => true,
            _ => false,
        };
        if refused {
            format!(
                "the service is not running at {} (connection refused); start it with \
                 `wprobe serve`, or give its address with --url or $WPROBE_URL",
                self.url
            )
        } else {
            format!("{method} {} failed: {e}", self.url.clone() + path)
        }
    }
}

/// An HTTP error answer as a message: the API's `error` and the status,
/// with a hint for the statuses that have an obvious next step.
fn status_error(status: u16, reason: Option<&str>, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let body = body.trim();
            if body.is_empty() {
                "no message".to_string()
            } else {
                body.to_string()
            }
        });
    let mut text = format!("{message} (HTTP {status}");
    if let Some(r) = reason {
        text += &format!(" {r}");
    }
    text.push(')');
    if status == 401 {
        text += "; give the service's token with --token or $WPROBE_TOKEN, or its data \
                 directory with --data-dir";
    }
    text
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a serde_json::Value always serializes")
}

/// Percent-encodes a query value (plugin names are plain already; this is
/// for anything else a user types).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- Server-Sent Events ----------------------------------------------------

/// One Server-Sent Event: its type (`message` when the stream gives none)
/// and its data lines joined with newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// The event-stream format, a line at a time (the WHATWG HTML standard,
/// "Server-sent events"): `field: value` lines, `:` comments, a blank
/// line ends an event.
#[derive(Debug, Default)]
pub struct SseParser {
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Takes one line (with or without its line ending); returns the event
    /// that a blank line completes.
    pub fn line(&mut self, line: &str) -> Option<SseEvent> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            let event = self.event.take();
            // An event without data is not dispatched.
            let data = self.data.take()?;
            return Some(SseEvent {
                // No type, or an empty one, is `message` (the standard's
                // "dispatch the event" step).
                event: event
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "message".to_string()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            // `id` and `retry` matter to a reconnecting browser, not here.
            _ => {}
        }
        None
    }
}

// --- Where the service is ----------------------------------------------------

/// The options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The service's URL; default $WPROBE_URL, else http://127.0.0.1:7878.
    /// The URL `wprobe serve` prints, with `#token=...`, gives the token
    /// too.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The service's token; default the URL's `#token=`, else
    /// $WPROBE_TOKEN, else the file `token` in the data directory.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The service's data directory, where its token is; default
    /// $XDG_DATA_HOME/wprobe, else ~/.local/share/wprobe.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Common {
    /// The client these options describe, from the real environment.
    pub fn api(&self) -> Result<Api, String> {
        resolve(self, |k| std::env::var_os(k))
    }
}

/// The client from the options and an environment (a function, so that
/// tests give their own).
fn resolve(common: &Common, env: impl Fn(&str) -> Option<OsString>) -> Result<Api, String> {
    let env_str = |k: &str| {
        env(k)
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| !v.is_empty())
    };
    let raw = common
        .url
        .clone()
        .or_else(|| env_str("WPROBE_URL"))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let (url, fragment_token) = match raw.split_once('#') {
        Some((u, frag)) => (
            u.to_string(),
            frag.strip_prefix("token=").map(str::to_string),
        ),
        None => (raw.clone(), None),
    };
    if !url.starts_with("http://") {
        return Err(format!(
            "the URL `{raw}` must start with http:// (the service speaks plain HTTP on a \
             local address)"
        ));
    }
    let token = match (common.token.clone(), fragment_token) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => match env_str("WPROBE_TOKEN") {
            Some(t) => t,
            None => {
                let dir = match &common.data_dir {
                    Some(d) => d.clone(),
                    None => default_data_dir(&env)?,
                };
                read_token(&dir)?
            }
        },
    };
    Ok(Api::new(&url, token.trim()))
}

/// Serve's default data directory: $XDG_DATA_HOME/wprobe, else
/// ~/.local/share/wprobe.
fn default_data_dir(env: &impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, String> {
    if let Some(d) = env("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("wprobe"));
    }
    match env("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/wprobe")),
        None => Err(
            "no token: give --token or $WPROBE_TOKEN, or --data-dir (neither XDG_DATA_HOME \
             nor HOME is set)"
                .into(),
        ),
    }
}

fn read_token(dir: &Path) -> Result<String, String> {
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!(
            "no token: cannot read {} ({e}); give --token or $WPROBE_TOKEN, or the service's \
             --data-dir (`wprobe serve` writes the token there when it first starts)",
            path.display()
        )),
    }
}

// --- Subcommands -------------------------------------------------------------

/// `wprobe target`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: TargetCmd,
}

#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Attach to a running process (--pid) or start a command (--spawn).
    Add(TargetAdd),
    /// List the targets.
    Ls,
    /// Stop tracing a target: its probes are taken out and it runs on.
    Rm {
        /// The target's id.
        id: i64,
    },
}

#[derive(Debug, Args)]
pub struct TargetAdd {
    /// Attach to this process.
    #[arg(long, conflicts_with_all = ["spawn", "command"], required_unless_present = "spawn")]
    pub pid: Option<i32>,
    /// Start COMMAND as a target: everything after it on the line is its
    /// arguments (give wprobe's own options before --spawn).
    #[arg(long, requires = "command")]
    pub spawn: bool,
    /// The command to spawn and its arguments.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        requires = "spawn"
    )]
    pub command: Vec<String>,
}

/// `wprobe probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: ProbeCmd,
}

#[derive(Debug, Subcommand)]
pub enum ProbeCmd {
    /// Place a probe (several SPECs: all or none, in one request).
    Add(ProbeAdd),
    /// List the probes.
    Ls {
        /// Only the probes of this target.
        #[arg(long, value_name = "ID")]
        target: Option<i64>,
    },
    /// Take probes out.
    Rm {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
    },
    /// Arm disabled probes.
    Enable {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
    },
    /// Disarm probes, keeping them (and their counts).
    Disable {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
    },
}

#[derive(Debug, Args)]
pub struct ProbeAdd {
    /// The target to probe.
    #[arg(long, value_name = "ID")]
    pub target: i64,
    /// A probe spec, e.g. 'uprobe:libc:malloc size=%rdi:u64' or
    /// 'uretprobe:BIN:work' (quote it: captures are separated by spaces).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<String>,
    /// Run a plugin on the probe's hits: its id or name, and optionally
    /// `=CONFIG` (JSON), e.g. `--plugin 3` or `--plugin 'strings-c={"arg":1}'`.
    /// May be given several times.
    #[arg(long = "plugin", value_name = "PLUGIN[=CONFIG]")]
    pub plugins: Vec<String>,
    /// Create it disarmed (enable it later with `probe enable`).
    #[arg(long)]
    pub disabled: bool,
    /// Allow captures or plugins that write to the target's memory or
    /// registers.
    #[arg(long)]
    pub allow_mutation: bool,
    /// Resolve and show where it would go, placing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `wprobe plugin`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: PluginCmd,
}

#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Upload a module (.wasm, or .wat text) as a new plugin, or a new
    /// version of the plugin with its name.
    Upload {
        file: PathBuf,
        /// The plugin's name; default the name in its manifest.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the plugins.
    Ls,
    /// Delete a plugin and all its versions (refused while probes use it).
    Rm {
        /// The plugin's id or name.
        #[arg(value_name = "PLUGIN")]
        plugin: String,
    },
}

/// `wprobe events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only the events of this target.
    #[arg(long, value_name = "ID")]
    pub target: Option<i64>,
    /// Only the events of this probe.
    #[arg(long, value_name = "ID")]
    pub probe: Option<i64>,
}

/// Runs `wprobe target`; the exit code.
pub fn target(args: TargetArgs) -> i32 {
    run("target", &args.common, |api| {
        let json = args.common.json;
        match args.cmd {
            TargetCmd::Add(add) => {
                let t = api.post("/api/targets", &target_request(&add)?)?;
                output(json, &t, || targets_table(std::slice::from_ref(&t)))
            }
            TargetCmd::Ls => {
                let list = api.get("/api/targets")?;
                output(json, &list, || targets_table(as_list(&list)))
            }
            TargetCmd::Rm { id } => {
                api.delete(&format!("/api/targets/{id}"))?;
                if !json {
                    println!("removed target {id}");
                }
                Ok(())
            }
        }
    })
}

/// Runs `wprobe probe`; the exit code.
pub fn probe(args: ProbeArgs) -> i32 {
    run("probe", &args.common, |api| {
        let json = args.common.json;
        match args.cmd {
            ProbeCmd::Add(add) => {
                let mut plugins = Vec::new();
                for p in &add.plugins {
                    let (plugin, config) = parse_plugin_arg(p)?;
                    plugins.push((plugin_id(api, &plugin)?, config));
                }
                let (path, body) = probe_add_request(&add, &plugins);
                let answer = api.post(&path, &body)?;
                if add.dry_run {
                    output(json, &answer, || dry_run_table(&answer))
                } else {
                    let probes = match &answer {
                        Value::Array(list) => list.clone(),
                        one => vec![one.clone()],
                    };
                    output(json, &answer, || probes_table(&probes))
                }
            }
            ProbeCmd::Ls { target } => {
                let path = match target {
                    Some(t) => format!("/api/probes?target={t}"),
                    None => "/api/probes".to_string(),
                };
                let list = api.get(&path)?;
                output(json, &list, || probes_table(as_list(&list)))
            }
            ProbeCmd::Rm { ids } => each(&ids, |id| {
                api.delete(&format!("/api/probes/{id}"))?;
                if !json {
                    println!("removed probe {id}");
                }
                Ok(())
            }),
            ProbeCmd::Enable { ids } => set_enabled(api, &ids, true, json),
            ProbeCmd::Disable { ids } => set_enabled(api, &ids, false, json),
        }
    })
}

/// Runs `wprobe plugin`; the exit code.
pub fn plugin(args: PluginArgs) -> i32 {
    run("plugin", &args.common, |api| {
        let json = args.common.json;
        match args.cmd {
            PluginCmd::Upload { file, name } => {
                let module =
                    std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
                let up = api.upload_plugin(module, name.as_deref())?;
                output(json, &up, || uploaded_line(&up))
            }
            PluginCmd::Ls => {
                let list = api.get("/api/plugins")?;
                output(json, &list, || plugins_table(as_list(&list)))
            }
            PluginCmd::Rm { plugin } => {
                let id = plugin_id(api, &PluginRef::parse(&plugin))?;
                api.delete(&format!("/api/plugins/{id}"))?;
                if !json {
                    println!("removed plugin {id}");
                }
                Ok(())
            }
        }
    })
}

/// Runs `wprobe events`: every hit as one JSON line on stdout, losses on
/// stderr, until the service ends the stream or stdout closes.
pub fn events(args: EventsArgs) -> i32 {
    run("events", &args.common, |api| {
        let path = events_path(args.target, args.probe);
        let stdout = std::io::stdout();
        let mut broken = false;
        api.follow_events(&path, |ev| {
            match event_line(&ev) {
                EventLine::Out(line) => {
                    let mut out = stdout.lock();
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        // A closed pipe (`| head`): done, quietly.
                        broken = true;
                        return false;
                    }
                }
                EventLine::Err(line) => eprintln!("wprobe events: {line}"),
                EventLine::Skip => {}
            }
            true
        })?;
        if broken {
            return Ok(());
        }
        Err(format!("the service at {} ended the event stream", api.url))
    })
}

/// Resolves the client, runs `body`, prints its error; the exit code.
fn run(what: &str, common: &Common, body: impl FnOnce(&Api) -> Result<(), String>) -> i32 {
    match common.api().and_then(|api| body(&api)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wprobe {what}: {e}");
            1
        }
    }
}

/// Runs `f` on every id, going on after a failure; the failures, together.
fn each(ids: &[i64], mut f: impl FnMut(i64) -> Result<(), String>) -> Result<(), String> {
    let errors: Vec<String> = ids
        .iter()
        .filter_map(|&id| f(id).err().map(|e| format!("{id}: {e}")))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn set_enabled(api: &Api, ids: &[i64], enabled: bool, json: bool) -> Result<(), String> {
    let mut done = Vec::new();
    let result = each(ids, |id| {
        done.push(api.patch(&format!("/api/probes/{id}"), &json!({ "enabled": enabled }))?);
        Ok(())
    });
    if !done.is_empty() {
        let answer = Value::Array(done.clone());
        output(json, &answer, || probes_table(&done))?;
    }
    result
}

/// Prints `value` as JSON, or the table `human` makes.
fn output(json: bool, value: &Value, human: impl FnOnce() -> String) -> Result<(), String> {
    let text = if json {
        serde_json::to_string_pretty(value).expect("a serde_json::Value always serializes")
    } else {
        human()
    };
    if !text.is_empty() {
        println!("{}", text.trim_end());
    }
    Ok(())
}

fn as_list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

// --- Requests ------------------------------------------------------------------

/// The body of `POST /api/targets`.
fn target_request(add: &TargetAdd) -> Result<Value, String> {
    match (add.pid, add.command.is_empty()) {
        (Some(pid), true) => Ok(json!({ "pid": pid })),
        (None, false) => Ok(json!({ "spawn": add.command })),
        _ => Err("give --pid PID or --spawn COMMAND [ARGS...]".into()),
    }
}

/// A plugin as the user names it: by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    Id(i64),
    Name(String),
}

impl PluginRef {
    fn parse(s: &str) -> PluginRef {
        match s.parse() {
            Ok(id) => PluginRef::Id(id),
            Err(_) => PluginRef::Name(s.to_string()),
        }
    }
}

/// `PLUGIN[=CONFIG]`: the plugin and its configuration (JSON).
fn parse_plugin_arg(s: &str) -> Result<(PluginRef, Option<Value>), String> {
    let (plugin, config) = match s.split_once('=') {
        Some((p, c)) => (p, Some(c)),
        None => (s, None),
    };
    if plugin.is_empty() {
        return Err(format!(
            "--plugin `{s}`: give a plugin id or name, e.g. --plugin 3 or --plugin 'strings-c={{\"arg\":1}}'"
        ));
    }
    let config =
        match config {
            Some(c) => Some(serde_json::from_str(c).map_err(|e| {
                format!("--plugin `{s}`: the configuration `{c}` is not JSON ({e})")
            })?),
            None => None,
        };
    Ok((PluginRef::parse(plugin), config))
}

/// A plugin's id, looking a name up in the service's list.
fn plugin_id(api: &Api, plugin: &PluginRef) -> Result<i64, String> {
    match plugin {
        PluginRef::Id(id) => Ok(*id),
        PluginRef::Name(name) => {
            let list = api.get("/api/plugins")?;
            let list = as_list(&list);
            if let Some(id) = list
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["id"].as_i64())
            {
                return Ok(id);
            }
            let names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
            Err(if names.is_empty() {
                format!("no plugin named `{name}`: none is uploaded (`wprobe plugin upload FILE`)")
            } else {
                format!("no plugin named `{name}` (plugins: {})", names.join(", "))
            })
        }
    }
}

/// One probe's object in `POST /api/probes` (and the batch).
fn probe_object(add: &ProbeAdd, spec: &str, plugins: &[(i64, Option<Value>)]) -> Value {
    let plugins: Vec<Value> = plugins
        .iter()
        .map(|(id, config)| match config {
            Some(c) => json!({ "plugin": id, "config": c }),
            None => json!({ "plugin": id }),
        })
        .collect();
    json!({
        "target": add.target,
        "spec": spec,
        "plugins": plugins,
        "enabled": !add.disabled,
        "allow_mutation": add.allow_mutation,
    })
}

/// The path and body of `probe add`: one probe, or a batch (all or none).
fn probe_add_request(add: &ProbeAdd, plugins: &[(i64, Option<Value>)]) -> (String, Value) {
    let query = if add.dry_run { "?dry_run=true" } else { "" };
    match add.specs.as_slice() {
        [one] => (
            format!("/api/probes{query}"),
            probe_object(add, one, plugins),
        ),
        many => {
            let probes: Vec<Value> = many.iter().map(|s| probe_object(add, s, plugins)).collect();
            (
                format!("/api/probes/batch{query}"),
                json!({ "probes": probes }),
            )
        }
    }
}

fn events_path(target: Option<i64>, probe: Option<i64>) -> String {
    let mut query = Vec::new();
    if let Some(t) = target {
        query.push(format!("target={t}"));
    }
    if let Some(p) = probe {
        query.push(format!("probe={p}"));
    }
    if query.is_empty() {
        "/api/events".to_string()
    } else {
        format!("/api/events?{}", query.join("&"))
    }
}

/// What `wprobe events` prints for one stream event.
#[derive(Debug, PartialEq, Eq)]
enum EventLine {
    /// A hit, as one JSON line on stdout.
    Out(String),
    /// A loss or an error, on stderr.
    Err(String),
    Skip,
}

fn event_line(ev: &SseEvent) -> EventLine {
    let parsed: Option<Value> = serde_json::from_str(&ev.data).ok();
    match ev.event.as_str() {
        "hit" | "message" => EventLine::Out(match parsed {
            // Compact, so that one event is one line whatever the stream
            // sent.
            Some(v) => v.to_string(),
            None => ev.data.replace('\n', " "),
        }),
        "loss" => EventLine::Err(match parsed {
            Some(v) => {
                let lost = cell(&v["lost"]);
                match v["reason"].as_str() {
                    Some(r) => format!("lost {lost} events ({r})"),
                    None => format!("lost {lost} events"),
                }
            }
            None => format!("loss: {}", ev.data),
        }),
        "error" => EventLine::Err(match parsed {
            Some(v) => match v["error"].as_str() {
                Some(e) => e.to_string(),
                None => v.to_string(),
            },
            None => ev.data.clone(),
        }),
        _ => EventLine::Skip,
    }
}

// --- Tables --------------------------------------------------------------------

/// Columns padded to their widest cell, two spaces apart; the last column
/// is not padded (it holds the long text: a command line, a spec).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s += cell;
            } else {
                let pad = widths[i] - cell.chars().count();
                s += cell;
                s += &" ".repeat(pad + 2);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".to_string(),
        Value::Bool(false) => "no".to_string(),
        other => other.to_string(),
    }
}

/// An address: hex whether the API gives a number or a string.
fn address(v: &Value) -> String {
    match v.as_u64() {
        Some(a) => format!("{a:#x}"),
        None => cell(v),
    }
}

fn targets_table(targets: &[Value]) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let exit = &t["exit"];
            let state = match (exit["code"].as_i64(), exit["signal"].as_i64()) {
                (Some(c), _) => format!("{} (exit {c})", cell(&t["state"])),
                (None, Some(s)) => format!("{} (signal {s})", cell(&t["state"])),
                _ => cell(&t["state"]),
            };
            vec![
                cell(&t["id"]),
                cell(&t["pid"]),
                cell(&t["kind"]),
                state,
                cell(&t["cmdline"]),
            ]
        })
        .collect();
    table(&["ID", "PID", "KIND", "STATE", "COMMAND"], &rows)
}

fn probes_table(probes: &[Value]) -> String {
    let rows: Vec<Vec<String>> = probes
        .iter()
        .map(|p| {
            let mut state = cell(&p["state"]);
            if p["enabled"] == Value::Bool(false) && state != "disabled" {
                state += " (disabled)";
            }
            let plugins: Vec<String> = as_list(&p["plugins"])
                .iter()
                .map(|pl| {
                    let name = match pl["name"].as_str() {
                        Some(n) => n.to_string(),
                        None => cell(&pl["plugin"]),
                    };
                    let mut s = match pl["version"].as_i64() {
                        Some(v) => format!("{name}@{v}"),
                        None => name,
                    };
                    if pl["quarantined"].as_bool() == Some(true) {
                        s += "(quarantined)";
                    }
                    s
                })
                .collect();
            let mut spec = cell(&p["spec"]);
            if let Some(reason) = p["reason"].as_str() {
                spec += &format!("  ({reason})");
            }
            vec![
                cell(&p["id"]),
                cell(&p["target"]),
                state,
                cell(&p["hits"]),
                cell(&p["nmissed"]),
                cell(&p["dropped"]),
                if plugins.is_empty() {
                    "-".to_string()
                } else {
                    plugins.join(",")
                },
                spec,
            ]
        })
        .collect();
    table(
        &[
            "ID", "TARGET", "STATE", "HITS", "MISSED", "DROPPED", "PLUGINS", "SPEC",
        ],
        &rows,
    )
}

fn dry_run_table(answer: &Value) -> String {
    let rows: Vec<Vec<String>> = as_list(&answer["placements"])
        .iter()
        .map(|p| {
            vec![
                cell(&p["pid"]),
                address(&p["address"]),
                cell(&p["location"]),
                cell(&p["decision"]),
                cell(&p["instruction"]),
            ]
        })
        .collect();
    let mut out = format!("dry run of {}: nothing placed\n", cell(&answer["spec"]));
    out += &table(
        &["PID", "ADDRESS", "LOCATION", "DECISION", "INSTRUCTION"],
        &rows,
    );
    out
}

fn plugins_table(plugins: &[Value]) -> String {
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            let latest = &p["latest"];
            let manifest = &latest["manifest"];
            vec![
                cell(&p["id"]),
                cell(&p["name"]),
                cell(&p["versions"]),
                cell(&latest["size"]),
                short_hash(&latest["sha256"]),
                format!("{} {}", cell(&manifest["name"]), cell(&manifest["version"])),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "VERSIONS", "SIZE", "SHA256", "MANIFEST"],
        &rows,
    )
}

fn short_hash(v: &Value) -> String {
    match v.as_str() {
        Some(h) if h.len() > 12 => h[..12].to_string(),
        _ => cell(v),
    }
}

fn uploaded_line(up: &Value) -> String {
    let v = &up["version"];
    format!(
        "plugin {} `{}` version {}: {} bytes, sha256 {}{}",
        cell(&up["id"]),
        cell(&up["name"]),
        cell(&v["version"]),
        cell(&v["size"]),
        short_hash(&v["sha256"]),
        if up["new_blob"] == Value::Bool(false) {
            " (the same bytes as an earlier upload)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The subcommands as main.rs wires them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        Target(TargetArgs),
        Probe(ProbeArgs),
        Plugin(PluginArgs),
        Events(EventsArgs),
    }

    fn parse(line: &str) -> Result<Cmd, String> {
        let args = std::iter::once("wprobe").chain(line.split_whitespace());
        Cli::try_parse_from(args)
            .map(|c| c.cmd)
            .map_err(|e| e.to_string())
    }

    /// The request a `wprobe target add` line makes, or the parse error.
    fn check_target(line: &str, expect: Result<Value, &str>) {
        let got = match parse(line) {
            Ok(Cmd::Target(TargetArgs {
                cmd: TargetCmd::Add(add),
                ..
            })) => target_request(&add),
            Ok(other) => panic!("{line}: parsed as {other:?}"),
            Err(e) => Err(e),
        };
        match (got, expect) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{line}"),
            (Err(g), Err(e)) => assert!(g.contains(e), "{line}: {g}"),
            (g, e) => panic!("{line}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn target_requests() {
        check_target("target add --pid 42", Ok(json!({"pid": 42})));
        check_target(
            "target add --spawn ./prog --fast -n 3",
            Ok(json!({"spawn": ["./prog", "--fast", "-n", "3"]})),
        );
        check_target(
            "target add --json --spawn sleep 100",
            Ok(json!({"spawn": ["sleep", "100"]})),
        );
        check_target("target add", Err("--pid"));
        check_target("target add --spawn", Err("COMMAND"));
        check_target("target add --pid 1 --spawn ls", Err("cannot be used with"));
        check_target("target add ls", Err("--spawn"));
    }

    /// The path and body a `wprobe probe add` line makes, plugins given
    /// by id.
    fn check_probe(line: &str, expect_path: &str, expect: Value) {
        let add = match parse(line) {
            Ok(Cmd::Probe(ProbeArgs {
                cmd: ProbeCmd::Add(add),
                ..
            })) => add,
            other => panic!("{line}: parsed as {other:?}"),
        };
        let plugins: Vec<(i64, Option<Value>)> = add
            .plugins
            .iter()
            .map(|p| match parse_plugin_arg(p).expect("plugin") {
                (PluginRef::Id(id), c) => (id, c),
                (name, _) => panic!("{name:?} is no id"),
            })
            .collect();
        let (path, body) = probe_add_request(&add, &plugins);
        assert_eq!(path, expect_path, "{line}");
        assert_eq!(body, expect, "{line}");
    }

    #[test]
    fn probe_requests() {
        check_probe(
            "probe add --target 1 uprobe:libc:malloc",
            "/api/probes",
            json!({"target": 1, "spec": "uprobe:libc:malloc", "plugins": [],
                   "enabled": true, "allow_mutation": false}),
        );
        check_probe(
            "probe add --target 2 uretprobe:x:work --plugin 3 --plugin 4={\"arg\":1} \
             --disabled --allow-mutation --dry-run",
            "/api/probes?dry_run=true",
            json!({"target": 2, "spec": "uretprobe:x:work",
                   "plugins": [{"plugin": 3}, {"plugin": 4, "config": {"arg": 1}}],
                   "enabled": false, "allow_mutation": true}),
        );
        check_probe(
            "probe add uprobe:a:f --target 1 uprobe:a:g",
            "/api/probes/batch",
            json!({"probes": [
                {"target": 1, "spec": "uprobe:a:f", "plugins": [], "enabled": true,
                 "allow_mutation": false},
                {"target": 1, "spec": "uprobe:a:g", "plugins": [], "enabled": true,
                 "allow_mutation": false}]}),
        );
    }

    #[test]
    fn probe_spec_with_captures_is_one_argument() {
        let cli = Cli::try_parse_from([
            "wprobe",
            "probe",
            "add",
            "--target",
            "1",
            "uprobe:libc:malloc size=%rdi:u64",
        ])
        .expect("parse");
        let Cmd::Probe(ProbeArgs {
            cmd: ProbeCmd::Add(add),
            ..
        }) = cli.cmd
        else {
            panic!("{:?}", cli.cmd)
        };
        assert_eq!(add.specs, ["uprobe:libc:malloc size=%rdi:u64"]);
    }

    #[test]
    fn other_commands_parse() {
        let ok = |line: &str| parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(matches!(
            ok("probe rm 1 2 3"),
            Cmd::Probe(ProbeArgs { cmd: ProbeCmd::Rm { ids }, .. }) if ids == [1, 2, 3]
        ));
        assert!(matches!(
            ok("probe ls --target 7 --json"),
            Cmd::Probe(ProbeArgs { cmd: ProbeCmd::Ls { target: Some(7) }, common })
                if common.json
        ));
        assert!(matches!(
            ok("probe enable 4 5 --url http://h:1"),
            Cmd::Probe(ProbeArgs { cmd: ProbeCmd::Enable { ids }, common })
                if ids == [4, 5] && common.url.as_deref() == Some("http://h:1")
        ));
        assert!(matches!(
            ok("events --probe 2 --token t"),
            Cmd::Events(EventsArgs { probe: Some(2), target: None, common })
                if common.token.as_deref() == Some("t")
        ));
        assert!(matches!(
            ok("plugin upload x.wasm --name n"),
            Cmd::Plugin(PluginArgs { cmd: PluginCmd::Upload { name: Some(n), .. }, .. })
                if n == "n"
        ));
        assert!(parse("probe rm").is_err());
        assert!(parse("probe enable").is_err());
    }

    #[test]
    fn plugin_args() {
        let check = |s: &str, expect: Result<(PluginRef, Option<Value>), &str>| match (
            parse_plugin_arg(s),
            expect,
        ) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{s}"),
            (Err(g), Err(e)) => assert!(g.contains(e), "{s}: {g}"),
            (g, e) => panic!("{s}: got {g:?}, expected {e:?}"),
        };
        check("3", Ok((PluginRef::Id(3), None)));
        check("count-c", Ok((PluginRef::Name("count-c".into()), None)));
        check(
            "strings-c={\"arg\":1,\"s\":\"a=b\"}",
            Ok((
                PluginRef::Name("strings-c".into()),
                Some(json!({"arg": 1, "s": "a=b"})),
            )),
        );
        check("3={arg:1}", Err("the configuration `{arg:1}` is not JSON"));
        check("={}", Err("give a plugin id or name"));
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn common(url: Option<&str>, token: Option<&str>, dir: Option<&Path>) -> Common {
        Common {
            url: url.map(str::to_string),
            token: token.map(str::to_string),
            data_dir: dir.map(Path::to_path_buf),
            json: false,
        }
    }

    /// The URL and token that options and an environment give.
    fn check_resolve(c: Common, env: &[(&str, &str)], expect: Result<(&str, &str), &str>) {
        let got = resolve(&c, env_of(env)).map(|a| (a.url, a.token));
        match (got, expect) {
            (Ok((u, t)), Ok((eu, et))) => assert_eq!((u.as_str(), t.as_str()), (eu, et)),
            (Err(g), Err(e)) => assert!(g.contains(e), "{g}"),
            (g, e) => panic!("{c:?} {env:?}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn token_and_url_lookup_order() {
        let scratch = std::env::temp_dir().join(format!("wprobe-cli-test-{}", std::process::id()));
        let data = scratch.join("data");
        let xdg = scratch.join("xdg");
        let home = scratch.join("home");
        for (dir, token) in [
            (data.clone(), "from-data-dir"),
            (xdg.join("wprobe"), "from-xdg"),
            (home.join(".local/share/wprobe"), "from-home\n"),
        ] {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("token"), token).expect("write token");
        }
        let (xdg_s, home_s) = (xdg.to_str().expect("utf-8"), home.to_str().expect("utf-8"));
        let all = [
            ("WPROBE_URL", "http://10.0.0.1:9/"),
            ("WPROBE_TOKEN", "from-env"),
            ("XDG_DATA_HOME", xdg_s),
            ("HOME", home_s),
        ];

        // --token beats everything; --url beats $WPROBE_URL.
        check_resolve(
            common(Some("http://h:1"), Some("flag"), Some(&data)),
            &all,
            Ok(("http://h:1", "flag")),
        );
        // The URL's fragment gives the token when --token does not.
        check_resolve(
            common(Some("http://h:1/#token=frag"), None, Some(&data)),
            &all,
            Ok(("http://h:1", "frag")),
        );
        // Then $WPROBE_TOKEN (and $WPROBE_URL, its slash trimmed).
        check_resolve(
            common(None, None, Some(&data)),
            &all,
            Ok(("http://10.0.0.1:9", "from-env")),
        );
        // Then --data-dir's token file.
        check_resolve(
            common(None, None, Some(&data)),
            &all[2..],
            Ok((DEFAULT_URL, "from-data-dir")),
        );
        // Then $XDG_DATA_HOME/wprobe, then ~/.local/share/wprobe.
        check_resolve(
            common(None, None, None),
            &all[2..],
            Ok((DEFAULT_URL, "from-xdg")),
        );
        check_resolve(
            common(None, None, None),
            &all[3..],
            Ok((DEFAULT_URL, "from-home")),
        );
        // An empty variable counts as unset.
        check_resolve(
            common(None, None, None),
            &[
                ("WPROBE_TOKEN", ""),
                ("XDG_DATA_HOME", ""),
                ("HOME", home_s),
            ],
            Ok((DEFAULT_URL, "from-home")),
        );
        check_resolve(
            common(None, None, None),
            &[],
            Err("neither XDG_DATA_HOME nor HOME"),
        );
        check_resolve(
            common(None, None, Some(&scratch)),
            &[],
            Err("`wprobe serve` writes the token there"),
        );
        check_resolve(
            common(Some("https://h:1"), Some("t"), None),
            &[],
            Err("must start with http://"),
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            status_error(
                400,
                Some("Bad Request"),
                r#"{"error":"no symbol `mallco`"}"#
            ),
            "no symbol `mallco` (HTTP 400 Bad Request)"
        );
        assert_eq!(
            status_error(502, None, "upstream gone\n"),
            "upstream gone (HTTP 502)"
        );
        assert!(
            status_error(401, Some("Unauthorized"), r#"{"error":"bad token"}"#)
                .starts_with("bad token (HTTP 401 Unauthorized); give the service's token")
        );
        assert_eq!(
            status_error(404, Some("Not Found"), ""),
            "no message (HTTP 404 Not Found)"
        );
    }

    /// Feeds `lines` to a parser; the events it completes.
    fn check_sse(lines: &[&str], expect: &[(&str, &str)]) {
        let mut p = SseParser::default();
        let got: Vec<(String, String)> = lines
            .iter()
            .filter_map(|l| p.line(l))
            .map(|e| (e.event, e.data))
            .collect();
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(e, d)| (e.to_string(), d.to_string()))
            .collect();
        assert_eq!(got, expect, "{lines:?}");
    }

    #[test]
    fn sse_parser() {
        check_sse(
            &["event: hit\n", "data: {\"seq\":1}\n", "\n"],
            &[("hit", "{\"seq\":1}")],
        );
        // CRLF endings, a comment, no space after the colon, two data
        // lines, an id, a default type.
        check_sse(
            &[
                ": keep-alive\r\n",
                "event:loss\r\n",
                "id: 7\r\n",
                "data:{\"lost\":3,\r\n",
                "data: \"reason\":\"full\"}\r\n",
                "\r\n",
                "data: plain\n",
                "\n",
            ],
            &[
                ("loss", "{\"lost\":3,\n\"reason\":\"full\"}"),
                ("message", "plain"),
            ],
        );
        // No data: nothing dispatched, and the type does not leak into the
        // next event.
        check_sse(
            &["event: hit\n", "\n", "data: x\n", "\n"],
            &[("message", "x")],
        );
        // An event the stream did not finish is not reported.
        check_sse(&["event: hit\n", "data: {}\n"], &[]);
    }

    #[test]
    fn event_lines() {
        let ev = |event: &str, data: &str| SseEvent {
            event: event.into(),
            data: data.into(),
        };
        assert_eq!(
            event_line(&ev("hit", "{ \"seq\": 1,\n \"kind\": \"entry\" }")),
            EventLine::Out(r#"{"kind":"entry","seq":1}"#.into())
        );
        assert_eq!(
            event_line(&ev("loss", r#"{"lost": 12, "reason": "slow client"}"#)),
            EventLine::Err("lost 12 events (slow client)".into())
        );
        assert_eq!(
            event_line(&ev("error", r#"{"error": "target 3 exited"}"#)),
            EventLine::Err("target 3 exited".into())
        );
        assert_eq!(event_line(&ev("ping", "")), EventLine::Skip);
        assert_eq!(events_path(None, None), "/api/events");
        assert_eq!(
            events_path(Some(1), Some(2)),
            "/api/events?target=1&probe=2"
        );
        assert_eq!(events_path(None, Some(2)), "/api/events?probe=2");
    }

    #[test]
    fn tables() {
        assert_eq!(
            table(
                &["ID", "NAME", "SPEC"],
                &[
                    vec!["1".into(), "count-c".into(), "uprobe:libc:malloc".into()],
                    vec!["12".into(), "x".into(), "".into()],
                ]
            ),
            "ID  NAME     SPEC\n\
             1   count-c  uprobe:libc:malloc\n\
             12  x\n"
        );
        assert_eq!(
            targets_table(&[
                json!({"id": 1, "pid": 4242, "kind": "spawned", "cmdline": "sleep 100",
                       "state": "running", "exit": null}),
                json!({"id": 2, "pid": 7, "kind": "attached", "cmdline": "a b",
                       "state": "exited", "exit": {"code": 3, "signal": null}}),
            ]),
            "ID  PID   KIND      STATE            COMMAND\n\
             1   4242  spawned   running          sleep 100\n\
             2   7     attached  exited (exit 3)  a b\n"
        );
        assert_eq!(
            probes_table(&[
                json!({"id": 5, "target": 1, "spec": "uprobe:libc:malloc", "enabled": true,
                       "state": "armed", "hits": 120, "nmissed": 0, "dropped": 2,
                       "plugins": [{"plugin": 3, "name": "count-c", "version": 1},
                                   {"plugin": 4, "name": "m", "version": 2,
                                    "quarantined": true}]}),
                json!({"id": 6, "target": 1, "spec": "uprobe:x:f", "enabled": false,
                       "state": "failed", "reason": "no symbol `f`", "hits": 0,
                       "nmissed": 0, "dropped": 0, "plugins": []}),
            ]),
            "ID  TARGET  STATE              HITS  MISSED  DROPPED  PLUGINS                     SPEC\n\
             5   1       armed              120   0       2        count-c@1,m@2(quarantined)  uprobe:libc:malloc\n\
             6   1       failed (disabled)  0     0       0        -                           uprobe:x:f  (no symbol `f`)\n"
        );
        assert_eq!(
            plugins_table(&[json!({"id": 1, "name": "count-c", "versions": 2,
                "latest": {"version": 2, "sha256": "4dd1ff34a24d7de6ba0bec15", "size": 9388,
                           "manifest": {"name": "count-c", "version": "0.1.0"}}})]),
            "ID  NAME     VERSIONS  SIZE  SHA256        MANIFEST\n\
             1   count-c  2         9388  4dd1ff34a24d  count-c 0.1.0\n"
        );
        assert_eq!(
            dry_run_table(&json!({"spec": "uprobe:x:f", "placements": [
                {"pid": 9, "address": 4198931, "location": "x:f+0",
                 "instruction": "push rbp", "decision": "emulate"}]})),
            "dry run of uprobe:x:f: nothing placed\n\
             PID  ADDRESS   LOCATION  DECISION  INSTRUCTION\n\
             9    0x401213  x:f+0     emulate   push rbp\n"
        );
        assert_eq!(
            uploaded_line(&json!({"id": 2, "name": "count-c", "new_blob": false,
                "version": {"version": 3, "size": 9388, "sha256": "4dd1ff34a24d7de6ba"}})),
            "plugin 2 `count-c` version 3: 9388 bytes, sha256 4dd1ff34a24d \
             (the same bytes as an earlier upload)"
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(percent_encode("count-c_1.0"), "count-c_1.0");
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }
}
