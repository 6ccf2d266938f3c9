//! Issue 17's hostile plugins, kept: every module of
//! `tests/plugins/hostile/` runs in `wprobe trace` on a real program
//! (`plugged allocs`: 100 calls of `alloc_one`) with a well-behaved
//! counting plugin (the C example `count`) on the same probe after it.
//!
//! Each file says what must become of it in its leading comment:
//!
//! ```text
//! ;; expect: refused | quarantined | contained
//! ;; reason: TEXT             the refusal or the quarantine says this
//! ;; stat: NAME = N           (or NAME > N) one of the plugin's stats
//! ;; args: ARG ...            more arguments of `wprobe trace`
//! ```
//!
//! - `refused`: `wprobe trace` names the file and the reason and stops
//!   (status 2) before the program runs.
//! - `quarantined`: five faults in a row, then it is not called again.
//! - `contained`: the host answered its calls with error codes (or capped
//!   them) and it never faulted: called at each of the 100 hits. Such a
//!   module checks the answers itself and returns non-zero (a fault) when
//!   one is not what docs/plugin-abi.md says.
//!
//! For every module that loads, the program ran to its end with its own
//! output and status, every hit was counted, and the counting plugin beside
//! the hostile one counted each exactly once.

use std::path::{Path, PathBuf};

use serde_json::Value;
use wprobe_tests::*;

#[derive(Debug, PartialEq)]
enum Expect {
    Refused,
    Quarantined,
    Contained,
}

/// A stat of the plugin's summary, compared with a number.
#[derive(Debug)]
struct StatCheck {
    name: String,
    more_than: bool,
    value: u64,
}

#[derive(Debug)]
struct Case {
    file: PathBuf,
    expect: Expect,
    reason: Option<String>,
    stats: Vec<StatCheck>,
    args: Vec<String>,
}

/// The calls of `alloc_one` in `plugged allocs`.
const HITS: u64 = 100;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/hostile")
}

/// Reads the leading `;; key: value` lines of a module.
fn case(file: PathBuf) -> Case {
    let text = std::fs::read_to_string(&file).expect("read a hostile module");
    let mut expect = None;
    let mut reason = None;
    let mut stats = Vec::new();
    let mut args = Vec::new();
    for line in text.lines() {
        let Some(comment) = line.strip_prefix(";;") else {
            break;
        };
        let Some((key, value)) = comment.trim().split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match key {
            "expect" => {
                expect = Some(match value {
                    "refused" => Expect::Refused,
                    "quarantined" => Expect::Quarantined,
                    "contained" => Expect::Contained,
                    other => panic!("{}: unknown expectation `{other}`", file.display()),
                })
            }
            "reason" => reason = Some(value.to_string()),
            "stat" => {
                let (name, more_than, n) = if let Some((n, v)) = value.split_once(" = ") {
                    (n, false, v)
                } else if let Some((n, v)) = value.split_once(" > ") {
                    (n, true, v)
                } else {
                    panic!(
                        "{}: `stat: {value}` is not NAME = N or NAME > N",
                        file.display()
                    )
                };
                stats.push(StatCheck {
                    name: name.to_string(),
                    more_than,
                    value: n.parse().expect("a number"),
                });
            }
            "args" => args = value.split_whitespace().map(String::from).collect(),
            _ => {}
        }
    }
    let expect = expect.unwrap_or_else(|| panic!("{}: no `;; expect:` line", file.display()));
    if expect != Expect::Contained && reason.is_none() {
        panic!(
            "{}: a refusal or a quarantine needs `;; reason:`",
            file.display()
        );
    }
    Case {
        file,
        expect,
        reason,
        stats,
        args,
    }
}

/// The summary line of the plugin loaded from `file`.
fn plugin_line<'a>(events: &'a [Value], file: &str) -> Option<&'a Value> {
    events
        .iter()
        .find_map(|e| e.get("plugin").filter(|p| p["file"] == file))
}

/// Runs one case; what is wrong with the outcome, if anything.
fn run(case: &Case, bin: &Path, plain: &str, good: &str) -> Result<(), String> {
    let hostile = case.file.to_string_lossy().into_owned();
    let name = case
        .file
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = scratch_dir().join(format!("hostile-{name}.jsonl"));
    let _ = std::fs::remove_file(&out);
    let spec = format!("uprobe:{}:alloc_one", bin.display());
    let b = bin.to_string_lossy();
    let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    args.extend_from_slice(&[
        "-o",
        out.to_str().unwrap(),
        "--plugin",
        &hostile,
        "--plugin",
        good,
        "-e",
        &spec,
        "--",
        &b,
        "allocs",
    ]);
    let t = trace(&args);
    let said = |what: String| format!("{what}\nstderr:\n{}", t.stderr);
    if case.expect == Expect::Refused {
        let reason = case.reason.as_deref().unwrap();
        let refusal = format!("wprobe: plugin {hostile} refused: ");
        let line = t.stderr.lines().find(|l| l.starts_with(&refusal));
        return match line {
            _ if t.status != Some(2) => Err(said(format!("status {:?}, not 2", t.status))),
            _ if !t.stdout.is_empty() => Err(said(format!("the program ran: {:?}", t.stdout))),
            Some(l) if l.contains(reason) => Ok(()),
            _ => Err(said(format!("no `{refusal}…{reason}`"))),
        };
    }
    if t.status != Some(0) {
        return Err(said(format!("status {:?}, not the program's 0", t.status)));
    }
    if t.stdout != plain {
        return Err(said(format!(
            "the program's output is {:?}, not {plain:?}",
            t.stdout
        )));
    }
    let (events, summary) = parse_jsonl(&std::fs::read_to_string(&out).unwrap_or_default());
    let hits = summary
        .as_ref()
        .and_then(|s| s["probes"][0]["hits"].as_u64());
    if hits != Some(HITS) {
        return Err(said(format!("{hits:?} hits in the summary {summary:?}")));
    }
    let counted = plugin_line(&events, good).map(|p| (&p["maps"]["hits_by_probe"], &p["stats"]));
    let Some((counted, good_stats)) = counted else {
        return Err(said("no summary of the counting plugin".into()));
    };
    if counted["values"] != serde_json::json!([{"key": 1, "value": HITS}])
        || good_stats["faults"] != 0
    {
        return Err(said(format!(
            "the counting plugin beside it counted {counted} ({good_stats})"
        )));
    }
    let Some(p) = plugin_line(&events, &hostile) else {
        return Err(said("no summary of the hostile plugin".into()));
    };
    let stats = &p["stats"];
    let num = |k: &str| stats[k].as_u64().unwrap_or(u64::MAX);
    match case.expect {
        Expect::Quarantined => {
            let reason = case.reason.as_deref().unwrap();
            let q = stats["quarantined"].as_str().unwrap_or("");
            if !q.contains("quarantined after 5 faults in a row") || !q.contains(reason) {
                return Err(said(format!("not quarantined for `{reason}`: {stats}")));
            }
            if num("calls") != 5 || num("faults") != 5 {
                return Err(said(format!("called again once quarantined: {stats}")));
            }
            if !t
                .stderr
                .contains(&format!("wprobe: plugin {hostile}: quarantined"))
            {
                return Err(said("the quarantine was not said on stderr".into()));
            }
        }
        Expect::Contained => {
            if num("calls") != HITS || num("faults") != 0 || !stats["quarantined"].is_null() {
                return Err(said(format!(
                    "not called at each hit without a fault: {stats}"
                )));
            }
        }
        Expect::Refused => unreachable!(),
    }
    for c in &case.stats {
        let v = num(&c.name);
        let ok = if c.more_than {
            v > c.value
        } else {
            v == c.value
        };
        if !ok {
            let op = if c.more_than { ">" } else { "=" };
            return Err(said(format!("{} {op} {} fails: {stats}", c.name, c.value)));
        }
    }
    Ok(())
}

#[test]
fn every_hostile_module_is_refused_faulted_or_contained_and_the_target_runs_on() {
    let mut cases: Vec<Case> = std::fs::read_dir(corpus_dir())
        .expect("tests/plugins/hostile")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wat"))
        .map(case)
        .collect();
    cases.sort_by(|a, b| a.file.cmp(&b.file));
    assert!(cases.len() >= 20, "the corpus has {} modules", cases.len());
    for e in [Expect::Refused, Expect::Quarantined, Expect::Contained] {
        assert!(cases.iter().any(|c| c.expect == e), "no case of {e:?}");
    }
    let bin = build("plugged", "hostile", &["-O2"]);
    let plain = run_plain(&bin, &["allocs"]);
    assert!(plain.status.success());
    let plain = String::from_utf8_lossy(&plain.stdout).into_owned();
    let good = example_plugin("count.c.wasm");
    let good = good.to_string_lossy();
    let started = std::time::Instant::now();
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            run(c, &bin, &plain, &good)
                .err()
                .map(|e| format!("{}: {e}", c.file.display()))
        })
        .collect();
    eprintln!(
        "{} hostile modules in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
