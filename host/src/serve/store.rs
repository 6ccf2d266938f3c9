//! The service's SQLite database (`DATA/wprobe.db`): plugins and their
//! versions, whose bytes are blobs keyed by their SHA-256, so that
//! identical bytes are stored once. Every write is one transaction.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The schema this code writes. Older databases are migrated at open, step
/// by step; a newer one is refused.
pub const SCHEMA_VERSION: i64 = 4;

const SCHEMA_V1: &str = "
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL
);
CREATE TABLE plugins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL
);
CREATE TABLE plugin_versions (
    plugin_id INTEGER NOT NULL REFERENCES plugins(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    manifest_name TEXT NOT NULL,
    manifest_version TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (plugin_id, version)
);
";

/// Version 2: the processes the service traces (issue 6).
const SCHEMA_V2: &str = "
CREATE TABLE targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pid INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    cmdline TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER,
    exit_signal INTEGER,
    created INTEGER NOT NULL
);
";

/// Version 3: probe definitions, and the executable of each target.
const SCHEMA_V3: &str = "
ALTER TABLE targets ADD COLUMN exe TEXT NOT NULL DEFAULT '';
CREATE TABLE probes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target_id INTEGER NOT NULL REFERENCES targets(id) ON DELETE CASCADE,
    spec TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    allow_mutation INTEGER NOT NULL,
    plugins TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX probes_by_target ON probes(target_id);
";

/// Version 4: why a target is in its state (a lost connection's cause),
/// and the manifest an upload gave in place of the module's own.
const SCHEMA_V4: &str = "
ALTER TABLE targets ADD COLUMN reason TEXT;
ALTER TABLE plugin_versions ADD COLUMN manifest_override TEXT;
";

/// How a target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct TargetExit {
    /// The exit code, when it called exit.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
}

/// A process the service traces, or traced.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Target {
    pub id: i64,
    pub pid: i32,
    /// "attached" or "spawned".
    pub kind: String,
    /// The command line, its arguments separated by spaces.
    pub cmdline: String,
    /// The executable (/proc/PID/exe when it became a target).
    pub exe: String,
    /// "running"; "exited" once it ended; "gone" when it was a target of a
    /// previous run of the service that ended meanwhile (a running one is
    /// attached again at start-up, with its probes); "lost" when its
    /// connection to wprobe-core ended or stopped answering (`reason` says
    /// how; its probes are inactive, and the core lets a target go when
    /// its connection ends).
    pub state: String,
    /// Why it is in its state, when the state alone does not say.
    pub reason: Option<String>,
    /// How it ended, when it did.
    pub exit: Option<TargetExit>,
    /// The process's start time (field 22 of /proc/PID/stat), which tells
    /// it apart from a later process with the same pid.
    pub start_time: u64,
    /// When it became a target, in seconds since the Unix epoch.
    pub created: i64,
}

fn target_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Target> {
    let code: Option<i32> = row.get("exit_code")?;
    let signal: Option<i32> = row.get("exit_signal")?;
    Ok(Target {
        id: row.get("id")?,
        pid: row.get("pid")?,
        kind: row.get("kind")?,
        cmdline: row.get("cmdline")?,
        exe: row.get("exe")?,
        state: row.get("state")?,
        reason: row.get("reason")?,
        exit: (code.is_some() || signal.is_some()).then_some(TargetExit { code, signal }),
        start_time: row.get::<_, i64>("start_time")? as u64,
        created: row.get("created")?,
    })
}

const TARGET_COLUMNS: &str =
    "id, pid, start_time, cmdline, exe, kind, state, reason, exit_code, exit_signal, created";

/// A probe's plugin, as stored: which plugin, with which configuration.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbePlugin {
    /// The plugin's id; its latest version runs.
    pub plugin: i64,
    /// The configuration handed to the plugin's `wprobe_init` (JSON; `{}`
    /// when absent).
    #[serde(default = "empty_config")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn empty_config() -> serde_json::Value {
    serde_json::json!({})
}

/// A probe definition as stored.
#[derive(Debug, Clone)]
pub struct ProbeRow {
    pub id: i64,
    pub target: i64,
    pub spec: String,
    pub enabled: bool,
    pub allow_mutation: bool,
    pub plugins: Vec<ProbePlugin>,
    pub created: i64,
}

fn probe_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ProbeRow> {
    let plugins: String = row.get("plugins")?;
    Ok(ProbeRow {
        id: row.get("id")?,
        target: row.get("target_id")?,
        spec: row.get("spec")?,
        enabled: row.get("enabled")?,
        allow_mutation: row.get("allow_mutation")?,
        plugins: serde_json::from_str(&plugins).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        created: row.get("created")?,
    })
}

const PROBE_COLUMNS: &str = "id, target_id, spec, enabled, allow_mutation, plugins, created";

/// The newest version of a plugin, with its bytes.
pub struct LatestModule {
    pub name: String,
    pub version: i64,
    pub sha256: String,
    pub bytes: Vec<u8>,
    /// The manifest (JSON) given at upload in place of the module's own.
    pub manifest: Option<String>,
}

/// One stored version of a plugin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginVersion {
    /// 1 for the first upload under a name, then 2, 3, ...
    pub version: i64,
    /// The SHA-256 of the module's bytes, in hex: its content address.
    pub sha256: String,
    /// The module's size in bytes.
    pub size: i64,
    /// The name and version the module's manifest gives.
    pub manifest: ManifestInfo,
    /// When it was uploaded, in seconds since the Unix epoch.
    pub created: i64,
}

/// What a version's manifest says of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ManifestInfo {
    pub name: String,
    pub version: String,
}

/// A plugin in the list: its latest version and how many there are.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginSummary {
    pub id: i64,
    pub name: String,
    pub versions: i64,
    pub latest: PluginVersion,
    pub created: i64,
}

/// A plugin with all its versions, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginDetail {
    pub id: i64,
    pub name: String,
    pub created: i64,
    pub versions: Vec<PluginVersion>,
}

/// What an upload stored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Uploaded {
    /// The plugin's id (the same for every version of one name).
    pub id: i64,
    pub name: String,
    /// The version this upload added.
    pub version: PluginVersion,
    /// Whether the bytes were new; false when a blob with the same SHA-256
    /// was already stored (then it is shared).
    pub new_blob: bool,
    /// Probes that ran an older version of this plugin now run this one
    /// (their maps kept): how many attachments were replaced.
    pub replaced: usize,
    /// Attachments the new version could not replace (its init refused
    /// their configuration); they run the old version still.
    pub replace_errors: Vec<String>,
}

/// The database. One connection, used under the service's lock.
pub struct Store {
    conn: Connection,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn plugins_json(plugins: &[ProbePlugin]) -> String {
    serde_json::to_string(plugins).unwrap_or_else(|_| "[]".into())
}

fn version_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PluginVersion> {
    Ok(PluginVersion {
        version: row.get("version")?,
        sha256: row.get("sha256")?,
        size: row.get("size")?,
        manifest: ManifestInfo {
            name: row.get("manifest_name")?,
            version: row.get("manifest_version")?,
        },
        created: row.get("created")?,
    })
}

const VERSION_COLUMNS: &str = "v.version, v.sha256, b.size, v.manifest_name, \
     v.manifest_version, v.created";

impl Store {
    /// Opens (creating or migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, String> {
        let fail = |e: rusqlite::Error| format!("database {}: {e}", path.display());
        let mut conn = Connection::open(path).map_err(fail)?;
        // Private whatever the umask or the directory's mode; SQLite gives
        // the -wal and -shm files the database file's mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("database {}: making it private (0600): {e}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(fail)?;
        let current: i64 = tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()
            .map_err(fail)?
            .unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(format!(
                "database {} has schema version {current}; this wprobe knows up to {SCHEMA_VERSION} \
                 (use a newer wprobe, or another --data-dir)",
                path.display()
            ));
        }
        if current < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(fail)?;
        }
        if current < 2 {
            tx.execute_batch(SCHEMA_V2).map_err(fail)?;
        }
        if current < 3 {
            tx.execute_batch(SCHEMA_V3).map_err(fail)?;
        }
        if current < 4 {
            tx.execute_batch(SCHEMA_V4).map_err(fail)?;
        }
        if current == 0 {
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )
            .map_err(fail)?;
        } else if current < SCHEMA_VERSION {
            tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
                .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        Ok(Store { conn })
    }

    /// Adds `bytes` as the next version of plugin `name` (created when
    /// new), storing the bytes only if no blob has them yet.
    pub fn add_version(
        &mut self,
        name: &str,
        bytes: &[u8],
        manifest_name: &str,
        manifest_version: &str,
        manifest_override: Option<&str>,
    ) -> rusqlite::Result<Uploaded> {
        let sha = sha256_hex(bytes);
        let created = now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let new_blob = tx.execute(
            "INSERT OR IGNORE INTO blobs (sha256, size, bytes) VALUES (?1, ?2, ?3)",
            params![sha, bytes.len() as i64, bytes],
        )? == 1;
        tx.execute(
            "INSERT OR IGNORE INTO plugins (name, created) VALUES (?1, ?2)",
            params![name, created],
        )?;
        let id: i64 = tx.query_row("SELECT id FROM plugins WHERE name = ?1", [name], |r| {
            r.get(0)
        })?;
        let version: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM plugin_versions WHERE plugin_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO plugin_versions
                 (plugin_id, version, sha256, manifest_name, manifest_version, created,
                  manifest_override)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                id,
                version,
                sha,
                manifest_name,
                manifest_version,
                created,
                manifest_override
            ],
        )?;
        tx.commit()?;
        Ok(Uploaded {
            id,
            name: name.to_string(),
            version: PluginVersion {
                version,
                sha256: sha,
                size: bytes.len() as i64,
                manifest: ManifestInfo {
                    name: manifest_name.to_string(),
                    version: manifest_version.to_string(),
                },
                created,
            },
            new_blob,
            replaced: 0,
            replace_errors: Vec::new(),
        })
    }

    /// Adds a running target.
    pub fn add_target(
        &mut self,
        pid: i32,
        start_time: u64,
        cmdline: &str,
        exe: &str,
        kind: &str,
    ) -> rusqlite::Result<Target> {
        self.conn.execute(
            "INSERT INTO targets (pid, start_time, cmdline, exe, kind, state, created)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
            params![pid, start_time as i64, cmdline, exe, kind, now()],
        )?;
        let id = self.conn.last_insert_rowid();
        self.target(id).map(|t| t.expect("just inserted"))
    }

    /// Every target, by id.
    pub fn targets(&self) -> rusqlite::Result<Vec<Target>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {TARGET_COLUMNS} FROM targets ORDER BY id"))?;
        let rows = stmt.query_map([], target_from_row)?;
        rows.collect()
    }

    pub fn target(&self, id: i64) -> rusqlite::Result<Option<Target>> {
        self.conn
            .query_row(
                &format!("SELECT {TARGET_COLUMNS} FROM targets WHERE id = ?1"),
                [id],
                target_from_row,
            )
            .optional()
    }

    /// The running target with this pid.
    pub fn running_target(&self, pid: i32) -> rusqlite::Result<Option<Target>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM targets WHERE pid = ?1 AND state = 'running'"
                ),
                [pid],
                target_from_row,
            )
            .optional()
    }

    /// The running target with this pid ended.
    pub fn target_exited(&mut self, pid: i32, exit: TargetExit) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE targets SET state = 'exited', exit_code = ?2, exit_signal = ?3
             WHERE pid = ?1 AND state = 'running'",
            params![pid, exit.code, exit.signal],
        )?;
        Ok(())
    }

    /// A target of an earlier run that could not be attached again.
    pub fn target_gone(&mut self, id: i64) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE targets SET state = 'gone' WHERE id = ?1 AND state = 'running'",
            [id],
        )?;
        Ok(())
    }

    /// The running target `id` lost its connection to the core.
    pub fn target_lost(&mut self, id: i64, reason: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE targets SET state = 'lost', reason = ?2 WHERE id = ?1 AND state = 'running'",
            params![id, reason],
        )?;
        Ok(())
    }

    /// Adds probe definitions, all in one transaction; their ids in order.
    pub fn add_probes(&mut self, probes: &[ProbeRow]) -> rusqlite::Result<Vec<i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ids = Vec::new();
        for p in probes {
            tx.execute(
                "INSERT INTO probes (target_id, spec, enabled, allow_mutation, plugins, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    p.target,
                    p.spec,
                    p.enabled,
                    p.allow_mutation,
                    plugins_json(&p.plugins),
                    p.created
                ],
            )?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Every probe, by id; only those of `target` when given. A row that
    /// cannot be read (a damaged database) is skipped and named on
    /// stderr, so that one bad row does not take every answer down.
    pub fn probes(&self, target: Option<i64>) -> rusqlite::Result<Vec<ProbeRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PROBE_COLUMNS} FROM probes
             WHERE ?1 IS NULL OR target_id = ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([target], |row| {
            let id: rusqlite::Result<i64> = row.get("id");
            Ok(probe_from_row(row).map_err(|e| (id, e)))
        })?;
        let mut good = Vec::new();
        for row in rows {
            match row? {
                Ok(p) => good.push(p),
                Err((id, e)) => {
                    let id = id.map_or_else(|_| "?".to_string(), |id| id.to_string());
                    eprintln!(
                        "wprobe serve: probe row {id} of the database is unreadable ({e}): \
                         skipped; delete it (DELETE /api/probes/{id}) or repair it"
                    );
                }
            }
        }
        Ok(good)
    }

    /// How many probes target `target` has, readable or not.
    pub fn probe_count(&self, target: i64) -> rusqlite::Result<usize> {
        self.conn.query_row(
            "SELECT COUNT(*) FROM probes WHERE target_id = ?1",
            [target],
            |r| r.get::<_, i64>(0).map(|n| n as usize),
        )
    }

    pub fn probe(&self, id: i64) -> rusqlite::Result<Option<ProbeRow>> {
        self.conn
            .query_row(
                &format!("SELECT {PROBE_COLUMNS} FROM probes WHERE id = ?1"),
                [id],
                probe_from_row,
            )
            .optional()
    }

    pub fn set_probe_enabled(&mut self, id: i64, enabled: bool) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE probes SET enabled = ?2 WHERE id = ?1",
            params![id, enabled],
        )?;
        Ok(())
    }

    pub fn set_probe_plugins(&mut self, id: i64, plugins: &[ProbePlugin]) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE probes SET plugins = ?2 WHERE id = ?1",
            params![id, plugins_json(plugins)],
        )?;
        Ok(())
    }

    pub fn delete_probe(&mut self, id: i64) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM probes WHERE id = ?1", [id])?
            == 1)
    }

    /// The probes whose plugin lists name plugin `id`.
    pub fn probes_using(&self, plugin: i64) -> rusqlite::Result<Vec<i64>> {
        Ok(self
            .probes(None)?
            .into_iter()
            .filter(|p| p.plugins.iter().any(|pp| pp.plugin == plugin))
            .map(|p| p.id)
            .collect())
    }

    /// The newest version of plugin `id`, with its bytes.
    pub fn latest_module(&self, id: i64) -> rusqlite::Result<Option<LatestModule>> {
        self.conn
            .query_row(
                "SELECT p.name, v.version, v.sha256, b.bytes, v.manifest_override FROM plugins p
                 JOIN plugin_versions v ON v.plugin_id = p.id
                 JOIN blobs b ON b.sha256 = v.sha256
                 WHERE p.id = ?1 ORDER BY v.version DESC LIMIT 1",
                [id],
                |r| {
                    Ok(LatestModule {
                        name: r.get(0)?,
                        version: r.get(1)?,
                        sha256: r.get(2)?,
                        bytes: r.get(3)?,
                        manifest: r.get(4)?,
                    })
                },
            )
            .optional()
    }

    pub fn delete_target(&mut self, id: i64) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM targets WHERE id = ?1", [id])?
            == 1)
    }

    /// Every plugin, by id, with its latest version.
    pub fn list(&self) -> rusqlite::Result<Vec<PluginSummary>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT p.id, p.name, p.created AS plugin_created,
                    (SELECT COUNT(*) FROM plugin_versions c WHERE c.plugin_id = p.id) AS n,
                    {VERSION_COLUMNS}
             FROM plugins p
             JOIN plugin_versions v ON v.plugin_id = p.id
             JOIN blobs b ON b.sha256 = v.sha256
             WHERE v.version = (SELECT MAX(version) FROM plugin_versions m
                                WHERE m.plugin_id = p.id)
             ORDER BY p.id"
        ))?;
        let rows = stmt.query_map([], |row| {
            Ok(PluginSummary {
                id: row.get("id")?,
                name: row.get("name")?,
                versions: row.get("n")?,
                latest: version_from_row(row)?,
                created: row.get("plugin_created")?,
            })
        })?;
        rows.collect()
    }

    /// One plugin with all its versions; `None` for an unknown id.
    pub fn get(&self, id: i64) -> rusqlite::Result<Option<PluginDetail>> {
        let head: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT name, created FROM plugins WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((name, created)) = head else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {VERSION_COLUMNS} FROM plugin_versions v
             JOIN blobs b ON b.sha256 = v.sha256
             WHERE v.plugin_id = ?1 ORDER BY v.version"
        ))?;
        let versions = stmt
            .query_map([id], version_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(PluginDetail {
            id,
            name,
            created,
            versions,
        }))
    }

    /// Removes a plugin, its versions, and the blobs no other version
    /// uses. False for an unknown id.
    pub fn delete(&mut self, id: i64) -> rusqlite::Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM plugin_versions WHERE plugin_id = ?1", [id])?;
        let gone = tx.execute("DELETE FROM plugins WHERE id = ?1", [id])? == 1;
        tx.execute(
            "DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM plugin_versions)",
            [],
        )?;
        tx.commit()?;
        Ok(gone)
    }

    /// How many distinct blobs are stored.
    pub fn blob_count(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wprobe-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("wprobe.db")
    }

    #[test]
    fn versions_share_identical_bytes() {
        let path = temp_db("versions");
        let mut s = Store::open(&path).expect("open");
        let a = s
            .add_version("count", b"one", "count", "1", None)
            .expect("add");
        let b = s
            .add_version("count", b"one", "count", "1", None)
            .expect("add");
        let c = s
            .add_version("count", b"two", "count", "2", None)
            .expect("add");
        assert_eq!((a.version.version, a.new_blob), (1, true));
        assert_eq!((b.version.version, b.new_blob, b.id), (2, false, a.id));
        assert_eq!((c.version.version, c.new_blob), (3, true));
        assert_eq!(s.blob_count().expect("count"), 2);
        let list = s.list().expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].versions, list[0].latest.version), (3, 3));
        drop(s);
        // Reopening finds the same rows and does not migrate again.
        let mut s = Store::open(&path).expect("reopen");
        assert_eq!(s.get(a.id).expect("get").expect("some").versions.len(), 3);
        assert!(s.delete(a.id).expect("delete"));
        assert!(!s.delete(a.id).expect("delete again"));
        assert_eq!(s.blob_count().expect("count"), 0);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn v1_migrates_and_targets_keep_their_state_over_reopen() {
        let path = temp_db("targets");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(SCHEMA_V1).expect("v1");
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (1);",
            )
            .expect("version 1");
        }
        let mut s = Store::open(&path).expect("migrate");
        let a = s
            .add_target(10, 5, "a b", "/bin/a", "attached")
            .expect("add");
        let b = s.add_target(11, 6, "c", "/bin/c", "spawned").expect("add");
        let row = ProbeRow {
            id: 0,
            target: a.id,
            spec: "uprobe:libc:malloc".into(),
            enabled: true,
            allow_mutation: false,
            plugins: vec![ProbePlugin {
                plugin: 7,
                config: serde_json::json!({"arg": 1}),
            }],
            created: 1,
        };
        let ids = s.add_probes(&[row.clone(), row]).expect("probes");
        assert_eq!(s.probes_using(7).expect("using"), ids);
        let exit = TargetExit {
            code: Some(3),
            signal: None,
        };
        s.target_exited(11, exit).expect("exited");
        assert_eq!(s.running_target(10).expect("get").expect("some").id, a.id);
        drop(s);
        let mut s = Store::open(&path).expect("reopen");
        let list = s.targets().expect("list");
        // Still "running": the service decides at start-up whether it is.
        assert_eq!(
            (list[0].state.as_str(), list[0].exe.as_str()),
            ("running", "/bin/a")
        );
        assert_eq!((list[1].id, list[1].state.as_str()), (b.id, "exited"));
        assert_eq!(list[1].exit, Some(exit));
        let probes = s.probes(Some(a.id)).expect("probes");
        assert_eq!(probes.len(), 2);
        assert_eq!(probes[0].plugins[0].config["arg"], 1);
        s.target_gone(a.id).expect("gone");
        assert!(s.running_target(10).expect("get").is_none());
        // Probes go with their target.
        assert!(s.delete_target(a.id).expect("delete"));
        assert!(s.probes(None).expect("probes").is_empty());
        let v: i64 = s
            .conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
    }
}
