//! Probes through `wprobe serve`: a real server on 127.0.0.1, its own
//! wprobe-core, real processes (the `gated` fixture runs its rounds when
//! the test says, so a probe sees an exact number of calls), real plugins
//! (the C examples), SQLite. Hit counts are checked against the kernel's
//! uprobes on the same function; every JSON answer is checked against the
//! served OpenAPI document; `/metrics` is read with a Prometheus parser.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use wprobe_tests::openapi::OpenApiValidator;
use wprobe_tests::service::*;
use wprobe_tests::*;

/// A server and the OpenAPI document it serves: every JSON answer is
/// validated against it.
struct Api {
    s: Server,
    doc: OpenApiValidator,
}

impl Api {
    fn start(dir: &Path, extra: &[&str]) -> Api {
        Api::start_env(dir, extra, &[])
    }

    /// [`Api::start`] with `env` added to the service's environment.
    fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Api {
        let s = Server::start_env(dir, extra, env);
        let r = s.call("GET", "/api/openapi.json", b"");
        assert_eq!(r.status, 200, "{}", r.text);
        let doc = OpenApiValidator::new(&r.json).expect("a usable OpenAPI document");
        Api { s, doc }
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let r = self.s.call(method, path, body);
        self.check(method, path, &r);
        r
    }

    fn check(&self, method: &str, path: &str, r: &Reply) {
        if r.status != 204 && !r.json.is_null() {
            if let Err(e) = self.doc.validate(method, path, r.status, &r.json) {
                panic!(
                    "{method} {path}: the answer does not match the OpenAPI document: {e}\n{}",
                    r.text
                );
            }
        }
    }

    fn json(&self, method: &str, path: &str, body: Value, status: u16) -> Value {
        let r = self.call(method, path, body.to_string().as_bytes());
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text);
        r.json
    }

    fn get(&self, path: &str) -> Value {
        let r = self.call("GET", path, b"");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.json
    }

    /// An error answer: its status, and a message naming `words`.
    fn refused(&self, method: &str, path: &str, body: &str, status: u16, words: &str) {
        let r = self.call(method, path, body.as_bytes());
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text);
        let msg = r.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error: {}", r.text));
        assert!(
            msg.contains(words),
            "{method} {path} {body}: `{msg}` lacks `{words}`"
        );
    }

    fn upload(&self, file: &Path, name: &str) -> i64 {
        let bytes = std::fs::read(file).expect("plugin file");
        let auth = format!("Bearer {}", self.s.token);
        let r = self.s.raw(
            "POST",
            &format!("/api/plugins?name={name}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/wasm"),
            ],
            &bytes,
        );
        assert_eq!(r.status, 201, "{}", r.text);
        self.check("POST", "/api/plugins", &r);
        r.json["id"].as_i64().expect("id")
    }

    fn attach(&self, pid: i32) -> i64 {
        self.json("POST", "/api/targets", json!({ "pid": pid }), 201)["id"]
            .as_i64()
            .expect("id")
    }

    fn probe(&self, id: i64) -> Value {
        self.get(&format!("/api/probes/{id}"))
    }

    fn hits(&self, id: i64) -> u64 {
        self.probe(id)["hits"].as_u64().expect("hits")
    }

    fn probe_count(&self) -> usize {
        self.get("/api/probes").as_array().expect("list").len()
    }

    fn metrics(&self) -> wprobe_tests::prom::Scrape {
        let auth = format!("Bearer {}", self.s.token);
        let r = self
            .s
            .raw("GET", "/metrics", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "{}", r.text);
        wprobe_tests::prom::parse(&r.text).unwrap_or_else(|e| panic!("{e}\n{}", r.text))
    }
}

/// An event stream read by a thread of its own: (event type, data).
struct Stream {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    _sock: TcpStream,
}

impl Stream {
    /// Opens `path`; `read` false leaves it unread (a slow client) until
    /// [`Stream::start_reading`].
    fn open(s: &Server, path: &str) -> (u16, Option<(TcpStream, BufReader<TcpStream>)>) {
        let mut sock = TcpStream::connect(&s.addr).expect("connect");
        write!(
            sock,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            s.addr, s.token
        )
        .expect("request");
        let mut r = BufReader::new(sock.try_clone().expect("clone"));
        let mut status = String::new();
        r.read_line(&mut status).expect("status line");
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{status:?}"));
        if code != 200 {
            return (code, None);
        }
        loop {
            let mut h = String::new();
            r.read_line(&mut h).expect("header");
            if h == "\r\n" {
                break;
            }
        }
        (code, Some((sock, r)))
    }

    fn read(s: &Server, path: &str) -> Stream {
        let (code, conn) = Self::open(s, path);
        assert_eq!(code, 200);
        Self::start_reading(conn.expect("stream"))
    }

    fn start_reading((sock, mut r): (TcpStream, BufReader<TcpStream>)) -> Stream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        std::thread::spawn(move || {
            // Chunked transfer encoding: chunk-size lines are skipped by
            // looking only at `event:` and `data:` lines.
            let mut event = String::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = String::from_utf8_lossy(&line);
                let l = l.trim_end();
                if let Some(e) = l.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = l.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(d)
                        .unwrap_or_else(|e| panic!("bad SSE data {d:?}: {e}"));
                    out.lock().unwrap().push((event.clone(), v));
                }
            }
        });
        Stream { seen, _sock: sock }
    }

    fn hits(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == "hit")
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn lost(&self) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == "loss")
            .map(|(_, v)| v["lost"].as_u64().expect("lost"))
            .sum()
    }
}

/// The fixture, built for one test: a file of its own, since a kernel
/// uprobe on a file is seen by every process that maps it.
fn gated(tag: &str) -> PathBuf {
    build("gated", tag, &["-O2", "-pthread"])
}

fn work_code(pid: i32, bin: &Path) -> (Vec<u8>, Vec<u8>) {
    live_and_file_bytes(pid, bin, "work", 16)
}

/// The sum of a count map's values.
fn map_total(maps: &Value, name: &str) -> u64 {
    maps[name]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no map {name}: {maps}"))
        .iter()
        .map(|v| v["value"].as_u64().expect("a count"))
        .sum()
}

#[test]
fn probes_with_plugins_live_events_and_metrics() {
    let bin = gated("live");
    let dir = data_dir("probes");
    let api = Api::start(&dir, &[]);
    let count = api.upload(&example_plugin("count.c.wasm"), "count");
    let latency = api.upload(&example_plugin("latency.c.wasm"), "latency");
    let n = 400;
    let mut g = Gated::start(&bin, n, false);
    let t = api.attach(g.pid());
    let stream = Stream::read(&api.s, &format!("/api/events?target={t}"));
    let b = bin.display();
    // The oracle: the kernel's uprobe counts a round first (the two cannot
    // share one breakpoint; each round calls `work` the same way).
    if tracefs_available() {
        let k = KernelProbes::new(&bin, &[('p', "work", 0)]);
        g.round();
        assert_eq!(k.counts(), vec![n], "the kernel's uprobe on a round");
    }

    // Both at once: an entry probe counting, a return probe timing.
    let made = api.json(
        "POST",
        "/api/probes/batch",
        json!({"probes": [
            {"target": t, "spec": format!("uprobe:{b}:work"), "plugins": [{"plugin": count}]},
            {"target": t, "spec": format!("uretprobe:{b}:work entry"),
             "plugins": [{"plugin": latency, "config": {}}]},
        ]}),
        201,
    );
    let (p1, p2) = (
        made[0]["id"].as_i64().unwrap(),
        made[1]["id"].as_i64().unwrap(),
    );
    for p in [&made[0], &made[1]] {
        assert_eq!(p["state"], "armed", "{p}");
        assert_eq!(p["placements"][0]["pid"], g.pid());
        assert!(p["placements"][0]["location"]
            .as_str()
            .unwrap()
            .contains("work"));
    }

    g.round();
    assert_eq!(api.hits(p1), n, "as many as the kernel's uprobe");
    assert_eq!(api.hits(p2), n);
    // How each is placed: the entry and the return probe share one jump
    // at the function's entry, no trap either way (docs/optprobes.md).
    for p in [p1, p2] {
        let path = format!("/api/probes/{p}");
        assert!(
            wait_until(60, || api.get(&path)["placements"][0]["placement"]
                == "optimized"),
            "{}",
            api.get(&path)
        );
    }

    // The stream: every call, in order, with its arguments and return
    // values; the return events pair with their entries.
    assert!(
        wait_until(60, || stream.hits().len() as u64 >= 3 * n),
        "{} events streamed",
        stream.hits().len()
    );
    let hits = stream.hits();
    let entries: Vec<&Value> = hits.iter().filter(|e| e["probe"] == p1).collect();
    assert_eq!(entries.len() as u64, n);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["kind"], "entry");
        assert_eq!(e["args"][0], i as u64, "{e}");
        assert_eq!(e["target"], t);
        assert_eq!(e["regs"]["rip"], e["address"]);
        // Which probe and where, on the line itself (as in `wprobe trace`).
        assert_eq!(e["symbol"], "work", "{e}");
        assert_eq!(e["module"], bin.to_string_lossy().as_ref(), "{e}");
        assert_eq!(e["spec"], format!("uprobe:{b}:work"), "{e}");
    }
    let returns: Vec<&Value> = hits
        .iter()
        .filter(|e| e["probe"] == p2 && e["kind"] == "return")
        .collect();
    assert_eq!(returns.len() as u64, n);
    for e in &returns {
        let x = e["ret"]["entry_args"][0].as_u64().unwrap();
        assert_eq!(e["ret"]["value"], x * 3 + 1, "{e}");
        assert!(e["ret"]["latency_ns"].as_u64().unwrap() > 0);
    }
    assert_eq!(stream.lost(), 0);

    // The same events in the bounded history.
    let auth = format!("Bearer {}", api.s.token);
    let r = api.s.raw(
        "GET",
        &format!("/api/events.jsonl?probe={p1}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200);
    let lines: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len() as u64, n);
    assert_eq!(lines[7]["args"][0], 7);
    let r = api.s.raw(
        "GET",
        &format!("/api/events.jsonl?probe={p1}&limit=5"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.text.lines().count(), 5);
    assert!(r
        .text
        .lines()
        .last()
        .unwrap()
        .contains(&format!("\"args\":[{}", n - 1)));

    // Aggregations: the count plugin counted every call, the latency
    // plugin timed every one.
    let aggs = api.get("/api/aggregations");
    let of = |probe: i64| {
        aggs.as_array()
            .unwrap()
            .iter()
            .find(|a| a["probe"] == probe)
            .unwrap_or_else(|| panic!("no aggregation of probe {probe}: {aggs}"))
            .clone()
    };
    assert_eq!(map_total(&of(p1)["maps"], "hits_by_probe"), n);
    let buckets = of(p2)["maps"]["latency_ns"]["values"][0]["value"].clone();
    let timed: u64 = buckets
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(timed, n);

    // /metrics agrees, histograms included.
    let m = api.metrics();
    let spec1 = format!("uprobe:{b}:work");
    let labels = [
        ("probe", p1.to_string()),
        ("target", t.to_string()),
        ("spec", spec1.clone()),
    ];
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        wprobe_tests::prom::value(&m, "wprobe_probe_hits_total", &l),
        Some(n as f64)
    );
    let pl = [
        ("probe", p2.to_string()),
        ("plugin", latency.to_string()),
        ("name", "latency".to_string()),
        ("map", "latency_ns".to_string()),
        ("key", String::new()),
    ];
    let pl: Vec<(&str, &str)> = pl.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_, sum, timed) = wprobe_tests::prom::histogram(&m, "wprobe_plugin_histogram", &pl)
        .expect("the latency histogram in /metrics");
    assert_eq!(timed, n as f64);
    assert!(sum > 0.0);

    // Disabled, it sees nothing; enabled again, it counts again.
    let p = api.json(
        "PATCH",
        &format!("/api/probes/{p1}"),
        json!({"enabled": false}),
        200,
    );
    assert_eq!(p["state"], "disabled");
    g.round();
    assert_eq!(api.hits(p1), n);
    assert_eq!(api.hits(p2), 2 * n);
    let p = api.json(
        "PATCH",
        &format!("/api/probes/{p1}"),
        json!({"enabled": true}),
        200,
    );
    assert_eq!(p["state"], "armed");
    g.round();
    assert_eq!(api.hits(p1), 2 * n);

    // The plugin's page: where it runs and how that goes.
    let page = || api.get(&format!("/api/plugins/{count}"));
    assert!(
        wait_until(60, || page()["attachments"][0]["calls"] == 2 * n),
        "{}",
        page()
    );
    let c = page();
    assert_eq!(c["state"], "active");
    assert_eq!(c["attachments"][0]["probe"], p1);
    // Attached, it cannot be deleted.
    api.refused(
        "DELETE",
        &format!("/api/plugins/{count}"),
        "",
        409,
        &p1.to_string(),
    );
    // A new version replaces it in place, its maps kept.
    let bytes = std::fs::read(example_plugin("count.c.wasm")).unwrap();
    let r = api.s.raw(
        "POST",
        "/api/plugins?name=count",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/wasm"),
        ],
        &bytes,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["replaced"], 1, "{}", r.text);
    assert_eq!(api.probe(p1)["plugins"][0]["version"], 2);
    g.round();
    // Plugins run as the events arrive, a little after the hits.
    let counted = || {
        let aggs = api.get(&format!("/api/aggregations?probe={p1}"));
        map_total(&aggs[0]["maps"], "hits_by_probe")
    };
    assert!(
        wait_until(60, || counted() == 3 * n),
        "{} counted",
        counted()
    );

    // Plugins changed on the fly: the count plugin off the entry probe.
    let p = api.json(
        "PATCH",
        &format!("/api/probes/{p1}"),
        json!({"plugins": []}),
        200,
    );
    assert_eq!(p["plugins"], json!([]));
    assert_eq!(api.get(&format!("/api/plugins/{count}"))["state"], "unused");

    // Deleted: the bytes are the file's again once both are gone.
    for p in [p1, p2] {
        let r = api.call("DELETE", &format!("/api/probes/{p}"), b"");
        assert_eq!(r.status, 204, "{}", r.text);
        let r = api.call("GET", &format!("/api/probes/{p}"), b"");
        assert_eq!(r.status, 404);
    }
    let (live, file) = work_code(g.pid(), &bin);
    assert_eq!(live, file);
    assert_eq!(api.probe_count(), 0);
    let r = api.call("DELETE", &format!("/api/targets/{t}"), b"");
    assert_eq!(r.status, 204, "{}", r.text);
    assert_untouched(g.pid(), &bin, "work");
    g.round();
}

#[test]
fn refusals_change_nothing() {
    let bin = gated("refusals");
    let dir = data_dir("probe-refusals");
    let api = Api::start(&dir, &["--max-probes-per-target", "2"]);
    let strings = api.upload(&example_plugin("strings.c.wasm"), "strings");
    let g = Gated::start(&bin, 10, false);
    let t = api.attach(g.pid());
    let b = bin.display();
    let good = format!("uprobe:{b}:work");
    let body = |spec: &str| json!({"target": t, "spec": spec}).to_string();

    // Without the token, or with a wrong one.
    for (path, method) in [
        ("/api/probes", "GET"),
        ("/api/probes", "POST"),
        ("/api/probes/batch", "POST"),
        ("/api/events", "GET"),
        ("/api/events.jsonl", "GET"),
        ("/api/aggregations", "GET"),
        ("/metrics", "GET"),
    ] {
        for headers in [vec![], vec![("Authorization", "Bearer 00")]] {
            let r = api.s.raw(method, path, &headers, b"{}");
            assert_eq!(r.status, 401, "{method} {path}: {}", r.text);
        }
    }

    api.refused("POST", "/api/probes", "{\"target\": ", 400, "not a probe");
    api.refused("POST", "/api/probes", "{\"spec\": \"x\"}", 400, "target");
    api.refused(
        "POST",
        "/api/probes",
        &json!({"target": t, "spec": good, "colour": 1}).to_string(),
        400,
        "colour",
    );
    api.refused(
        "POST",
        "/api/probes",
        &json!({"target": 999, "spec": good}).to_string(),
        422,
        "999",
    );
    api.refused(
        "POST",
        "/api/probes",
        &body("kprobe:do_sys_open"),
        400,
        "kprobe",
    );
    api.refused(
        "POST",
        "/api/probes",
        &body(&format!("uprobe:{b}:no_such_fn")),
        422,
        "no_such_fn",
    );
    // Inside an instruction: the engine refuses, naming the offset.
    api.refused(
        "POST",
        "/api/probes",
        &body(&format!("uprobe:{b}:work+1")),
        422,
        "work+0x1",
    );
    api.refused(
        "POST",
        "/api/probes",
        &json!({"target": t, "spec": good, "plugins": [{"plugin": 4242}]}).to_string(),
        422,
        "4242",
    );
    // The strings plugin refuses a configuration it cannot follow.
    api.refused(
        "POST",
        "/api/probes",
        &json!({"target": t, "spec": good,
                "plugins": [{"plugin": strings, "config": {"arg": "first"}}]})
        .to_string(),
        422,
        "strings",
    );
    // A batch with one bad probe creates none.
    api.refused(
        "POST",
        "/api/probes/batch",
        &json!({"probes": [
            {"target": t, "spec": good},
            {"target": t, "spec": format!("uprobe:{b}:work+1")},
        ]})
        .to_string(),
        422,
        "probes[1]",
    );
    api.refused(
        "POST",
        "/api/probes/batch",
        "{\"probes\": []}",
        400,
        "empty",
    );
    // Nothing of all that is left: no probe, no changed byte.
    assert_eq!(api.probe_count(), 0);
    let (live, file) = work_code(g.pid(), &bin);
    assert_eq!(live, file);

    // The cap: two probes per target here.
    let three: Vec<Value> = (0..3).map(|_| json!({"target": t, "spec": good})).collect();
    api.refused(
        "POST",
        "/api/probes/batch",
        &json!({"probes": three}).to_string(),
        422,
        "cap of 2",
    );
    assert_eq!(api.probe_count(), 0);
    let one = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": good, "enabled": false}),
        201,
    );
    assert_eq!(one["state"], "disabled");
    let id = one["id"].as_i64().unwrap();

    // Unknown ids, bad ids, empty changes.
    for method in ["GET", "DELETE"] {
        api.refused(method, "/api/probes/777", "", 404, "777");
        api.refused(method, "/api/probes/x7", "", 400, "x7");
    }
    api.refused(
        "PATCH",
        "/api/probes/777",
        "{\"enabled\": true}",
        404,
        "777",
    );
    api.refused(
        "PATCH",
        &format!("/api/probes/{id}"),
        "{}",
        400,
        "nothing to change",
    );
    api.refused(
        "PATCH",
        &format!("/api/probes/{id}"),
        "{\"plugins\": [{\"plugin\": 9}]}",
        422,
        "9",
    );
    assert_eq!(api.probe(id)["plugins"], json!([]));
    api.refused("GET", "/api/events?target=x", "", 400, "target");
    api.refused("GET", "/api/events.jsonl?colour=1", "", 400, "colour");

    // A probe on a target that is not traced any more.
    let r = api.call("DELETE", &format!("/api/targets/{t}"), b"");
    assert_eq!(r.status, 204);
    api.refused("POST", "/api/probes", &body(&good), 422, &t.to_string());
    assert_untouched(g.pid(), &bin, "work");
}

#[test]
fn restart_rearms_probes_of_running_targets() {
    let bin = gated("restart");
    let dir = data_dir("probe-restart");
    let n = 50;
    let mut g = Gated::start(&bin, n, false);
    let mut gone = Gated::start(&bin, n, false);
    let b = bin.display();
    let (t, p, t_gone, p_gone) = {
        let api = Api::start(&dir, &[]);
        let count = api.upload(&example_plugin("count.c.wasm"), "count");
        let t = api.attach(g.pid());
        let t_gone = api.attach(gone.pid());
        let spec = format!("uprobe:{b}:work");
        let p = api.json(
            "POST",
            "/api/probes",
            json!({"target": t, "spec": spec, "plugins": [{"plugin": count}]}),
            201,
        )["id"]
            .as_i64()
            .unwrap();
        let p_gone = api.json(
            "POST",
            "/api/probes",
            json!({"target": t_gone, "spec": spec}),
            201,
        )["id"]
            .as_i64()
            .unwrap();
        g.round();
        assert_eq!(api.hits(p), n);
        (t, p, t_gone, p_gone)
        // The server is killed here (SIGKILL): its core lets both go.
    };
    assert!(wait_until(60, || proc_status(g.pid(), "TracerPid:")
        .as_deref()
        == Some("0")));
    assert_untouched(g.pid(), &bin, "work");
    // One of them ends while no service runs.
    let gone_pid = gone.pid();
    gone.end();
    assert!(proc_status(gone_pid, "TracerPid:").is_none());

    let api = Api::start(&dir, &[]);
    let targets = api.get("/api/targets");
    let state_of = |id: i64| {
        targets
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state_of(t), "running");
    assert_eq!(state_of(t_gone), "gone");
    let probe = api.probe(p);
    assert_eq!(probe["state"], "armed", "{probe}");
    assert_eq!(probe["hits"], 0, "a new connection counts anew");
    let probe_gone = api.probe(p_gone);
    assert_eq!(probe_gone["state"], "inactive", "{probe_gone}");
    g.round();
    assert_eq!(api.hits(p), n);
    let counted = || {
        let aggs = api.get(&format!("/api/aggregations?probe={p}"));
        map_total(&aggs[0]["maps"], "hits_by_probe")
    };
    assert!(wait_until(60, || counted() == n), "{} counted", counted());
    // The probe of the ended target can still be removed.
    let r = api.call("DELETE", &format!("/api/probes/{p_gone}"), b"");
    assert_eq!(r.status, 204, "{}", r.text);
    drop(api);
    assert!(wait_until(60, || proc_status(g.pid(), "TracerPid:")
        .as_deref()
        == Some("0")));
    assert_untouched(g.pid(), &bin, "work");
    g.round();
}

#[test]
fn slow_stream_clients_lose_events_not_the_others() {
    let bin = gated("sse");
    let dir = data_dir("probe-sse");
    let api = Api::start(&dir, &["--sse-buffer", "256", "--max-sse-clients", "2"]);
    let n = 30_000;
    let mut g = Gated::start(&bin, n, false);
    let t = api.attach(g.pid());
    let p = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": format!("uprobe:{}:work", bin.display())}),
        201,
    )["id"]
        .as_i64()
        .unwrap();
    let (code, slow) = Stream::open(&api.s, "/api/events");
    assert_eq!(code, 200);
    let fast = Stream::read(&api.s, &format!("/api/events?probe={p}"));
    // A third stream is over the cap.
    let (code, _) = Stream::open(&api.s, "/api/events");
    assert_eq!(code, 429);

    // The round completes while one client reads nothing at all.
    g.round();
    assert_eq!(api.hits(p), n);
    assert!(
        wait_until(60, || fast.hits().len() as u64 + fast.lost() >= n),
        "fast: {} + {} lost",
        fast.hits().len(),
        fast.lost()
    );
    assert_eq!(fast.hits().len() as u64 + fast.lost(), n);
    // The slow one, read at last: told what it lost, never silent.
    let slow = Stream::start_reading(slow.expect("stream"));
    assert!(
        wait_until(60, || slow.hits().len() as u64 + slow.lost() >= n),
        "slow: {} + {} lost",
        slow.hits().len(),
        slow.lost()
    );
    assert!(
        slow.lost() > 0,
        "a client that never read must have lost events"
    );
    assert_eq!(slow.hits().len() as u64 + slow.lost(), n);
    let m = api.metrics();
    assert!(
        wprobe_tests::prom::value(&m, "wprobe_sse_lost_total", &[]).unwrap() >= slow.lost() as f64
    );
    assert_eq!(
        wprobe_tests::prom::value(&m, "wprobe_sse_clients", &[]),
        Some(2.0)
    );
}

#[test]
fn multipart_upload_and_a_faulting_plugin() {
    let bin = gated("plugins");
    let dir = data_dir("probe-plugins");
    let api = Api::start(&dir, &[]);
    // Multipart, as a browser's form sends it.
    let module = br#"(module
      (memory (export "memory") 1)
      (func (export "wprobe_abi_version") (result i32) i32.const 1)
      (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
      (func (export "wprobe_on_entry") (param i32 i32) (result i32) unreachable))"#;
    let mut body = Vec::new();
    let boundary = "wprobe-test-boundary";
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\ntrapper\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.wat\"\r\n\
         Content-Type: application/wasm\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(module);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    let auth = format!("Bearer {}", api.s.token);
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = api.s.raw(
        "POST",
        "/api/plugins",
        &[("Authorization", &auth), ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["name"], "trapper");
    let trapper = r.json["id"].as_i64().unwrap();
    // A form without the module stores nothing.
    let empty = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--{boundary}--\r\n");
    let r = api.s.raw(
        "POST",
        "/api/plugins",
        &[("Authorization", &auth), ("Content-Type", &ct)],
        empty.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("file"), "{}", r.text);
    assert_eq!(api.get("/api/plugins").as_array().unwrap().len(), 1);

    // It traps on every call: quarantined after a few, the target runs on.
    let mut g = Gated::start(&bin, 20, false);
    let t = api.attach(g.pid());
    let p = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": format!("uprobe:{}:work", bin.display()),
               "plugins": [{"plugin": trapper}]}),
        201,
    )["id"]
        .as_i64()
        .unwrap();
    g.round();
    assert_eq!(api.hits(p), 20);
    let page = || api.get(&format!("/api/plugins/{trapper}"));
    assert!(
        wait_until(60, || page()["state"] == "quarantined"),
        "{}",
        page()
    );
    let page = page();
    assert!(page["faults"].as_u64().unwrap() >= 5, "{page}");
    assert!(page["attachments"][0]["quarantined"].is_string(), "{page}");
    assert!(
        page["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("unreachable")),
        "{page}"
    );
    let probe = api.probe(p);
    assert!(
        probe["plugins"][0]["faults"].as_u64().unwrap() >= 5,
        "{probe}"
    );
    let m = api.metrics();
    let labels = [
        ("probe", p.to_string()),
        ("plugin", trapper.to_string()),
        ("name", "trapper".into()),
    ];
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        wprobe_tests::prom::value(&m, "wprobe_plugin_quarantined", &l),
        Some(1.0)
    );
}

#[test]
fn demo_shows_live_probes_and_cleans_up() {
    let dir = data_dir("demo");
    let mut demo = Command::new(wprobe_bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wprobe demo");
    let mut out = BufReader::new(demo.stdout.take().expect("stdout"));
    let mut url = String::new();
    out.read_line(&mut url).expect("the URL");
    let rest = url.trim().strip_prefix("http://").expect("a URL");
    let (addr, token) = rest.split_once("/#token=").expect("a token");
    let auth = format!("Bearer {token}");
    let get = |path: &str| {
        let r = request(addr, "GET", path, &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        r.json
    };
    // Within seconds: four probes armed and hit, the plugins' maps filling.
    let live = || {
        let probes = get("/api/probes");
        let probes = probes.as_array().unwrap();
        probes.len() == 4
            && probes
                .iter()
                .all(|p| p["state"] == "armed" && p["hits"].as_u64().unwrap() > 0)
    };
    assert!(wait_until(60, live), "{}", get("/api/probes"));
    assert!(wait_until(60, || get("/api/aggregations")
        .as_array()
        .unwrap()
        .iter()
        .any(
            |a| a["name"] == "mallocsize" && a["calls"].as_u64().unwrap() > 0
        )));
    let workload = get("/api/targets")[0]["pid"].as_i64().unwrap() as i32;
    assert!(proc_status(workload, "TracerPid:").is_some_and(|t| t != "0"));
    // Ctrl-C: the service ends, the workload with it.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let status = demo.wait().expect("wait for the demo");
    let mut err = String::new();
    let _ = demo.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("traced with 4 probes"), "{err}");
    // What is traced, and no warnings about the demo's own workload (its
    // probed functions are `extern "C"`).
    assert!(
        err.contains("uretprobe:") && err.contains(":demo_work entry"),
        "{err}"
    );
    assert!(!err.contains("unwinding"), "{err}");
    assert!(
        wait_until(60, || proc_status(workload, "State:")
            .is_none_or(|s| s.starts_with('Z'))),
        "the workload ended"
    );
}

#[test]
fn symbols_disassembly_and_dry_runs() {
    let bin = gated("symbols");
    let dir = data_dir("probe-symbols");
    let api = Api::start(&dir, &["--max-body", "4096", "--retain-events", "7"]);
    let mut g = Gated::start(&bin, 30, false);
    let t = api.attach(g.pid());
    let b = bin.display();

    // Functions of the executable and its libraries.
    let syms = api.get(&format!("/api/targets/{t}/symbols?q=work"));
    let work = syms
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "work")
        .unwrap_or_else(|| panic!("no `work`: {syms}"))
        .clone();
    assert!(
        work["module"].as_str().unwrap().ends_with("gated-symbols"),
        "{work}"
    );
    assert!(work["size"].as_u64().unwrap() > 0);
    let malloc = api.get(&format!("/api/targets/{t}/symbols?q=mall*&limit=500"));
    assert!(
        malloc
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "malloc" && s["module"].as_str().unwrap().contains("libc")),
        "{malloc}"
    );
    let two = api.get(&format!("/api/targets/{t}/symbols?q=a&limit=2"));
    assert_eq!(two.as_array().unwrap().len(), 2);
    api.refused(
        "GET",
        &format!("/api/targets/{t}/symbols?limit=0"),
        "",
        400,
        "limit",
    );
    api.refused("GET", "/api/targets/99/symbols?q=x", "", 404, "99");

    // Its first instructions, each probe-able or not and why.
    let d = api.get(&format!("/api/targets/{t}/disasm?symbol=work&count=8"));
    assert_eq!(d["address"], work["address"]);
    let insns = d["instructions"].as_array().unwrap();
    assert!(!insns.is_empty() && insns.len() <= 8);
    assert_eq!(insns[0]["offset"], 0);
    assert_eq!(insns[0]["probe"], true, "{d}");
    for i in insns {
        assert!(i["text"].as_str().is_some_and(|t| !t.is_empty()), "{i}");
        assert!(i["probe"] == true || i["reason"].is_string(), "{i}");
    }
    // The disassembly's offsets are where probes go: the second one works.
    let off = insns[1]["offset"].as_u64().unwrap();
    let spec = format!("uprobe:{b}:work+{off}");
    let dry = api.json(
        "POST",
        "/api/probes?dry_run=true",
        json!({"target": t, "spec": spec}),
        200,
    );
    assert_eq!(dry["dry_run"], true);
    let place = &dry["probes"][0]["placements"][0];
    assert_eq!(
        place["address"].as_u64().unwrap(),
        work["address"].as_u64().unwrap() + off,
        "{dry}"
    );
    assert!(place["instruction"].is_string(), "{dry}");
    // A dry run arms nothing, and refuses like the real thing.
    assert_eq!(api.probe_count(), 0);
    let (live, file) = work_code(g.pid(), &bin);
    assert_eq!(live, file);
    api.refused(
        "POST",
        "/api/probes?dry_run=true",
        &json!({"target": t, "spec": format!("uprobe:{b}:work+1")}).to_string(),
        422,
        "work+0x1",
    );
    api.refused(
        "GET",
        &format!("/api/targets/{t}/disasm?symbol=nope_nothing"),
        "",
        404,
        "nope_nothing",
    );
    api.refused(
        "GET",
        &format!("/api/targets/{t}/disasm"),
        "",
        400,
        "symbol",
    );

    // The real probe where the dry run said; the history keeps 7 events.
    let p = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": spec}),
        201,
    );
    assert_eq!(p["placements"][0]["address"], place["address"]);
    g.round();
    assert_eq!(api.hits(p["id"].as_i64().unwrap()), 30);
    let auth = format!("Bearer {}", api.s.token);
    assert!(wait_until(60, || {
        let r = api
            .s
            .raw("GET", "/api/events.jsonl", &[("Authorization", &auth)], b"");
        r.text.lines().count() == 7 && r.text.contains("\"args\":[29")
    }));
    // The body cap.
    let big = format!("{{\"target\": {t}, \"spec\": \"{}\"}}", "x".repeat(8192));
    api.refused("POST", "/api/probes", &big, 413, "4096 bytes (--max-body)");
    assert_eq!(api.probe_count(), 1);
}

#[test]
fn a_probe_refused_when_its_library_loads_leaves_the_program_running() {
    let lib = build_dlt_library("libdlt-serve.so");
    let bin = build("dlmain", "serve-later", &["-O2"]);
    let api = Api::start(&data_dir("refused-later"), &[]);
    let mut child = Command::new(&bin)
        .arg(&lib)
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dlmain");
    read_ready(&mut child);
    let t = api.attach(child.id() as i32);
    // The library is not loaded yet: the probe waits for it.
    let p = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": "uprobe:libdlt-serve:dl_fnuc"}),
        201,
    )["id"]
        .as_i64()
        .unwrap();
    assert_eq!(api.probe(p)["state"], "pending");
    // It loads, the symbol is not there: the probe is refused, and the
    // program goes on untouched (the engine held it until told).
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    assert!(
        wait_until(60, || child.try_wait().unwrap().is_some()),
        "the program ran to its end (state of the probe: {})",
        api.probe(p)
    );
    let mut rest = String::new();
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert_eq!(rest, "sum=81\n");
    assert!(child.wait().unwrap().success());
}

/// Issue 17: map updates refused at the key cap (`-7`) are counted where
/// they can be seen: the probe's and the plugin's pages, and `/metrics`.
#[test]
fn map_updates_refused_at_the_key_cap_are_shown() {
    let bin = gated("key-cap");
    let dir = data_dir("key-cap");
    let api = Api::start(&dir, &[]);
    // Each call adds 300 new keys to map "k" (10 000 keys at most), and
    // counts the updates refused with -7 in map "refused" (made on the
    // first call, under the cap).
    let module = br#"(module
      (import "wprobe" "map_update" (func $map_update (param i32 i32 i32 i32 i32 i32 i64) (result i32)))
      (memory (export "memory") 1)
      (global $next (mut i64) (i64.const 0))
      (data (i32.const 0) "krefused")
      (func (export "wprobe_abi_version") (result i32) i32.const 1)
      (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
      (func (export "wprobe_on_entry") (param i32 i32) (result i32)
        (local $i i32)
        (drop (call $map_update (i32.const 1) (i32.const 1) (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0)))
        (loop $l
          (i64.store (i32.const 16) (global.get $next))
          (global.set $next (i64.add (global.get $next) (i64.const 1)))
          (if (i32.eq (i32.const -7)
                (call $map_update (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 2) (i32.const 16) (i32.const 8) (i64.const 0)))
            (then (drop (call $map_update (i32.const 1) (i32.const 1) (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 1)))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 300))))
        i32.const 0))"#;
    let auth = format!("Bearer {}", api.s.token);
    let r = api.s.raw(
        "POST",
        "/api/plugins?name=hoarder",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/wasm"),
        ],
        module,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let plugin = r.json["id"].as_i64().unwrap();
    let mut g = Gated::start(&bin, 40, false);
    let t = api.attach(g.pid());
    let p = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": format!("uprobe:{}:work", bin.display()),
               "plugins": [{"plugin": plugin}]}),
        201,
    )["id"]
        .as_i64()
        .unwrap();
    g.round();
    let page = || api.get(&format!("/api/plugins/{plugin}"));
    assert!(
        wait_until(20, || page()["attachments"][0]["calls"] == 40),
        "{}",
        page()
    );
    let page = page();
    let att = &page["attachments"][0];
    assert_eq!(att["faults"], 0, "{page}");
    // What the plugin saw refused, the host counted: 40 × 300 updates of
    // new keys, 1 key of "refused", a cap of 10 000.
    let aggs = api.get("/api/aggregations");
    let maps = aggs
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["probe"] == p)
        .unwrap_or_else(|| panic!("no aggregation of probe {p}: {aggs}"))["maps"]
        .clone();
    let seen = map_total(&maps, "refused");
    assert_eq!(seen, 40 * 300 + 1 - 10_000, "{maps}");
    assert_eq!(att["map_updates_refused"].as_u64(), Some(seen), "{page}");
    let probe = api.probe(p);
    assert_eq!(
        probe["plugins"][0]["map_updates_refused"].as_u64(),
        Some(seen),
        "{probe}"
    );
    let m = api.metrics();
    let labels = [
        ("probe", p.to_string()),
        ("plugin", plugin.to_string()),
        ("name", "hoarder".into()),
    ];
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        wprobe_tests::prom::value(&m, "wprobe_plugin_map_updates_refused_total", &l),
        Some(seen as f64)
    );
}

/// A target's thread waits for its core and for commands in one poll,
/// never in a read of the core's socket. Such a read, with a timeout the
/// kernel counts in its ticks (4 ms at HZ=250, so "1 ms" lasted up to
/// 8 ms), held every request that came while it lasted: `GET
/// /api/probes` back to back took 8 ms each (issue 11, item 7). Looked at
/// right after each answer, when it has nothing left to do, the thread
/// must not be blocked in a read.
#[test]
fn a_target_thread_waits_for_commands_in_poll_not_in_a_read() {
    let bin = gated("idle-wait");
    let dir = data_dir("idle-wait");
    let api = Api::start(&dir, &[]);
    let g = Gated::start(&bin, 1, false);
    let t = api.attach(g.pid());
    let spec = format!("uprobe:{}:work", bin.display());
    api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": spec}),
        201,
    );
    let service = api.s.child.id();
    let name = format!("target {t}");
    let task = std::fs::read_dir(format!("/proc/{service}/task"))
        .expect("the service's threads")
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim_end() == name))
        .unwrap_or_else(|| panic!("no thread named `{name}` in the service"));
    // The system call a thread is blocked in; `None` while it runs.
    let blocked_in = || -> Option<i64> {
        let text = std::fs::read_to_string(task.join("syscall")).expect("its syscall file");
        let first = text.split_whitespace().next().unwrap_or("running");
        first.parse().ok()
    };
    let reads = [libc::SYS_read, libc::SYS_recvfrom, libc::SYS_recvmsg];
    let mut seen = Vec::new();
    for _ in 0..40 {
        // A round trip through the thread: it took the command, asked its
        // core for the counters, and answered.
        api.get("/api/probes");
        let call = (0..100_000).find_map(|_| blocked_in());
        seen.push(call.expect("the thread blocks somewhere once it is done"));
    }
    assert!(
        !seen.iter().any(|c| reads.contains(c)),
        "the target's thread waited in a read of its socket (system calls {reads:?}) after \
         answering: {seen:?}"
    );
}

/// A plugin whose `where` calls `wprobe.log`: "handler" (its entry
/// handler), "alloc" (its allocator, first called at the first event: it
/// has no `wprobe_init`) or "init" (`wprobe_init`, called when it is
/// attached).
fn log_caller(name: &str, place: &str) -> String {
    let call = "(drop (call $log (i32.const 2) (i32.const 4096) (i32.const 2)))";
    let (alloc, handler, init) = match place {
        "handler" => ("", call, String::new()),
        "alloc" => (call, "", String::new()),
        "init" => (
            "",
            "",
            format!(
                r#"(func (export "wprobe_init") (param i32 i32) (result i32) {call} i32.const 0)"#
            ),
        ),
        other => panic!("no place {other}"),
    };
    format!(
        r#"(module
      (import "wprobe" "log" (func $log (param i32 i32 i32) (result i32)))
      (@custom "wprobe.manifest" "{{\"name\":\"{name}\",\"version\":\"1\",\"abi\":1}}")
      (memory (export "memory") 1)
      (data (i32.const 4096) "hi")
      (func (export "wprobe_abi_version") (result i32) i32.const 1)
      (func (export "wprobe_alloc") (param i32) (result i32) {alloc} i32.const 1024)
      {init}
      (func (export "wprobe_on_entry") (param i32 i32) (result i32) {handler} i32.const 0))"#
    )
}

/// Issue 17, item 2: a panic in host code under a plugin call (a wprobe
/// bug, injected here: `WPROBE_HOST_FAULT_INJECTION=log` makes every call
/// of `wprobe.log` panic) faulted nothing and lost the target, whose probe
/// still showed "armed" with 0 hits, and later requests got a false 409.
/// Now the plugin is faulted and quarantined at once, with the panic's
/// message; the other plugins of the probe count every hit; the probe,
/// the target and later requests tell the truth.
#[test]
fn a_panic_in_host_code_under_a_plugin_call_faults_the_plugin_and_the_target_stays_true() {
    let bin = gated("host-panic");
    let dir = data_dir("host-panic");
    let api = Api::start_env(&dir, &[], &[("WPROBE_HOST_FAULT_INJECTION", "log")]);
    let stderr = std::fs::read_to_string(dir.with_extension("stderr")).unwrap_or_default();
    assert!(
        stderr.contains("WPROBE_HOST_FAULT_INJECTION=log: every call of wprobe.log"),
        "the service says it injects faults: {stderr}"
    );
    let auth = format!("Bearer {}", api.s.token);
    let upload = |name: &str, place: &str| {
        let r = api.s.raw(
            "POST",
            &format!("/api/plugins?name={name}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/wasm"),
            ],
            log_caller(name, place).as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text);
        r.json["id"].as_i64().expect("id")
    };
    let in_handler = upload("in-handler", "handler");
    let in_alloc = upload("in-alloc", "alloc");
    let in_init = upload("in-init", "init");
    let count = api.upload(&example_plugin("count.c.wasm"), "count");
    let n = 40;
    let mut g = Gated::start(&bin, n, false);
    let t = api.attach(g.pid());
    let spec = format!("uprobe:{}:work", bin.display());
    // The counting plugin last: it runs after the two that panic.
    let p = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": spec, "plugins": [
            {"plugin": in_handler}, {"plugin": in_alloc}, {"plugin": count}]}),
        201,
    );
    assert_eq!(p["state"], "armed", "{p}");
    let p = p["id"].as_i64().unwrap();
    g.round();
    let calls = |plugin: i64| {
        api.get(&format!("/api/plugins/{plugin}"))["attachments"][0]["calls"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(60, || calls(count) == n),
        "the counting plugin was called {} times, not {n}: {}",
        calls(count),
        api.probe(p)
    );
    let panic = "made the host panic (WPROBE_HOST_FAULT_INJECTION: wprobe.log panics)";
    for plugin in [in_handler, in_alloc] {
        let page = api.get(&format!("/api/plugins/{plugin}"));
        let att = &page["attachments"][0];
        assert_eq!(
            (&att["calls"], &att["faults"]),
            (&1.into(), &1.into()),
            "{page}"
        );
        let q = att["quarantined"].as_str().unwrap_or_default();
        assert!(
            q.starts_with("quarantined after 1 faults in a row") && q.contains(panic),
            "{page}"
        );
    }
    let aggs = api.get(&format!("/api/aggregations?probe={p}"));
    let counted = aggs
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["plugin"] == count)
        .unwrap_or_else(|| panic!("no maps of the counting plugin: {aggs}"));
    assert_eq!(map_total(&counted["maps"], "hits_by_probe"), n, "{aggs}");
    // The probe and the target as they are: armed, every hit counted.
    let probe = api.probe(p);
    assert_eq!(probe["state"], "armed", "{probe}");
    assert_eq!(probe["hits"], n, "{probe}");
    let target = api.get(&format!("/api/targets/{t}"));
    assert_eq!(target["state"], "running", "{target}");
    // A plugin whose wprobe_init panics is refused with the reason, not a
    // 5xx; nothing of that probe is made.
    let before = api.probe_count();
    api.refused(
        "POST",
        "/api/probes",
        &json!({"target": t, "spec": spec, "plugins": [{"plugin": in_init}]}).to_string(),
        422,
        panic,
    );
    assert_eq!(api.probe_count(), before);
    // Later requests on the target are answered as for any other: no 409.
    let p2 = api.json(
        "POST",
        "/api/probes",
        json!({"target": t, "spec": spec, "plugins": [{"plugin": count}]}),
        201,
    );
    assert_eq!(p2["state"], "armed", "{p2}");
    let p2 = p2["id"].as_i64().unwrap();
    let off = api.json(
        "PATCH",
        &format!("/api/probes/{p}"),
        json!({"enabled": false}),
        200,
    );
    assert_eq!(off["state"], "disabled", "{off}");
    g.round();
    assert_eq!((api.hits(p), api.hits(p2)), (n, n));
    let on = api.json(
        "PATCH",
        &format!("/api/probes/{p}"),
        json!({"enabled": true}),
        200,
    );
    assert_eq!(on["state"], "armed", "{on}");
    g.round();
    assert_eq!((api.hits(p), api.hits(p2)), (2 * n, 2 * n));
    assert!(
        wait_until(60, || calls(count) == 2 * n),
        "the counting plugin of the first probe: {} calls",
        calls(count)
    );
    // Its end is seen: the target exited, its probes are no longer armed.
    g.end();
    assert!(
        wait_until(60, || api.get(&format!("/api/targets/{t}"))["state"]
            == "exited"),
        "{}",
        api.get(&format!("/api/targets/{t}"))
    );
    for id in [p, p2] {
        let probe = api.probe(id);
        assert_eq!(probe["state"], "inactive", "{probe}");
    }
}
