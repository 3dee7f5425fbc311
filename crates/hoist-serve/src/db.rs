//! The service's durable state: SQLite in WAL mode with `synchronous=FULL`,
//! so a committed change survives `kill -9` and power loss. Two tables:
//! `images`, keyed by platform manifest digest (the build unit: two tags
//! of one digest build once), and `names`, the tags and digest references
//! that point at them. A status change is committed before the work it
//! describes starts, so a restart can always tell what to re-queue.
//!
//! Nothing here is trusted blindly: [`Db::open`] runs `PRAGMA quick_check`
//! and decodes every row through the types below, so a damaged database is
//! refused at start instead of answering 500 later. Disk paths are stored
//! relative to the data directory (schema 2): a moved data directory, or
//! one reached through a symlink, still names its disks.

use std::path::Path;

use hoist::{Digest, ImageMetadata, Platform};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// Build status, as the Go original names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Pulling,
    Converting,
    Ready,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Pulling => "pulling",
            Status::Converting => "converting",
            Status::Ready => "ready",
            Status::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "pulling" => Status::Pulling,
            "converting" => Status::Converting,
            "ready" => Status::Ready,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Pulling,
        Status::Converting,
        Status::Ready,
        Status::Failed,
    ];
    /// Work that a restart must finish.
    pub fn unfinished(self) -> bool {
        matches!(self, Status::Pending | Status::Pulling | Status::Converting)
    }
}

/// One image (one digest) as stored.
#[derive(Debug, Clone)]
pub struct ImageRow {
    pub digest: Digest,
    /// `registry/repository`: where a build by digest pulls from.
    pub repo: String,
    pub status: Status,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub size_bytes: Option<u64>,
    pub metadata: ImageMetadata,
    pub platform: Platform,
    /// `ext4`, `erofs`, `cpio`, `cpio.gz`: the disk's file extension.
    pub format: String,
    /// The disk, relative to the data directory.
    pub disk_path: String,
    pub created_at: String,
    /// Queue order, and the build's generation: every (re)queue takes a
    /// new one, so a build that was cancelled and superseded can tell that
    /// the record it would write is no longer its own.
    pub seq: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A row that does not decode: the file was damaged or written by
    /// something else.
    #[error("state database: {what}: {reason}")]
    Damaged { what: String, reason: String },
}

pub struct Db {
    conn: Connection,
}

/// Schema 1 stored absolute disk paths; schema 2 stores them relative to
/// the data directory; schema 3 adds the tags pushed to `/v2`.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
    digest      TEXT PRIMARY KEY,
    repo        TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    error_code  TEXT,
    size_bytes  INTEGER,
    metadata    TEXT NOT NULL,
    platform    TEXT NOT NULL,
    format      TEXT NOT NULL,
    disk_path   TEXT,
    created_at  TEXT NOT NULL,
    seq         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name    TEXT PRIMARY KEY,
    digest  TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS names_digest ON names(digest);
CREATE TABLE IF NOT EXISTS pushed_tags (
    repo        TEXT NOT NULL,
    tag         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    media_type  TEXT NOT NULL,
    PRIMARY KEY (repo, tag)
);
";

const COLS: &str = "digest, repo, status, error, error_code, size_bytes, metadata, platform, \
                    format, disk_path, created_at, seq";

/// Where an image's disk lives, relative to the data directory: a function
/// of the record alone, so it can always be computed again.
pub fn disk_rel_path(repo: &str, digest: &Digest, format: &str) -> String {
    format!("images/{repo}/{}/rootfs.{format}", digest.hex())
}

fn damaged(what: impl Into<String>, reason: impl std::fmt::Display) -> DbError {
    DbError::Damaged {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Decode a row: every field through its type, so garbage is an error.
fn row(r: &rusqlite::Row<'_>) -> Result<ImageRow, DbError> {
    let digest: String = r.get(0)?;
    let what = format!("image {digest:?}");
    let digest: Digest = digest.parse().map_err(|e| damaged(&what, e))?;
    let status: String = r.get(2)?;
    let status =
        Status::parse(&status).ok_or_else(|| damaged(&what, format!("status {status:?}")))?;
    let metadata: String = r.get(6)?;
    let metadata: ImageMetadata =
        serde_json::from_str(&metadata).map_err(|e| damaged(&what, format!("metadata: {e}")))?;
    let platform: String = r.get(7)?;
    let platform: Platform = platform
        .parse()
        .map_err(|e| damaged(&what, format!("platform: {e}")))?;
    let repo: String = r.get(1)?;
    let format: String = r.get(8)?;
    if !["ext4", "erofs", "cpio", "cpio.gz"].contains(&format.as_str()) {
        return Err(damaged(&what, format!("format {format:?}")));
    }
    let disk_path = disk_rel_path(&repo, &digest, &format);
    let stored: Option<String> = r.get(9)?;
    if stored.as_deref().is_some_and(|s| s != disk_path) {
        return Err(damaged(&what, format!("disk path {stored:?}")));
    }
    Ok(ImageRow {
        digest,
        repo,
        status,
        error: r.get(3)?,
        error_code: r.get(4)?,
        size_bytes: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
        metadata,
        platform,
        format,
        disk_path,
        created_at: r.get(10)?,
        seq: r.get(11)?,
    })
}

impl Db {
    /// Open (creating if new), check, and migrate. A database that fails
    /// `quick_check` or holds a row that does not decode is an error: the
    /// caller refuses to start.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(damaged("quick_check", check));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(damaged(
                "schema",
                format!("version {version} is newer than this hoist ({SCHEMA_VERSION})"),
            ));
        }
        conn.execute_batch(SCHEMA)?;
        let mut db = Db { conn };
        if version < SCHEMA_VERSION {
            db.migrate()?;
        }
        db.validate()?;
        Ok(db)
    }

    /// Schema 1 → 2: disk paths become relative, computed again from the
    /// record (the absolute ones may name a directory that moved). 2 → 3
    /// only adds a table, which `SCHEMA` made.
    fn migrate(&mut self) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        let rows: Vec<(String, String, String)> = {
            let mut st = tx.prepare("SELECT digest, repo, format FROM images")?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            v
        };
        for (digest, repo, format) in rows {
            let d: Digest = digest
                .parse()
                .map_err(|e| damaged(format!("image {digest:?}"), e))?;
            tx.execute(
                "UPDATE images SET disk_path = ?2 WHERE digest = ?1",
                params![digest, disk_rel_path(&repo, &d, &format)],
            )?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Decode every row and every name once.
    fn validate(&self) -> Result<(), DbError> {
        self.all()?;
        let mut st = self
            .conn
            .prepare("SELECT repo, tag, digest FROM pushed_tags")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (repo, tag, d): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            d.parse::<Digest>()
                .map_err(|e| damaged(format!("pushed tag {repo}:{tag}"), e))?;
        }
        let mut st = self.conn.prepare("SELECT name, digest FROM names")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (name, digest): (String, String) = (r.get(0)?, r.get(1)?);
            if name.parse::<hoist::Reference>().is_err() || digest.parse::<Digest>().is_err() {
                return Err(damaged(format!("name {name:?}"), "does not parse"));
            }
        }
        Ok(())
    }

    fn rows(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<ImageRow>, DbError> {
        let mut st = self.conn.prepare_cached(sql)?;
        let mut rows = st.query(p)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(row(r)?);
        }
        Ok(out)
    }

    pub fn image(&self, digest: &Digest) -> Result<Option<ImageRow>, DbError> {
        Ok(self
            .rows(
                &format!("SELECT {COLS} FROM images WHERE digest = ?1"),
                [digest.to_string()],
            )?
            .pop())
    }

    /// Every image, oldest first.
    pub fn all(&self) -> Result<Vec<ImageRow>, DbError> {
        self.rows(&format!("SELECT {COLS} FROM images ORDER BY seq"), [])
    }

    pub fn is_empty(&self) -> Result<bool, DbError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM images", [], |r| r.get(0))?;
        Ok(n == 0)
    }

    pub fn digest_of(&self, name: &str) -> Result<Option<Digest>, DbError> {
        let d: Option<String> = self
            .conn
            .query_row("SELECT digest FROM names WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        d.map(|d| d.parse().map_err(|e| damaged(format!("name {name:?}"), e)))
            .transpose()
    }

    pub fn names_of(&self, digest: &Digest) -> Result<Vec<String>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name FROM names WHERE digest = ?1 ORDER BY name")?;
        let v = st
            .query_map([digest.to_string()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Every name with its digest.
    pub fn all_names(&self) -> Result<Vec<(String, Digest)>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, digest FROM names ORDER BY name")?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let (n, d): (String, String) = (r.get(0)?, r.get(1)?);
            let d = d.parse().map_err(|e| damaged(format!("name {n:?}"), e))?;
            out.push((n, d));
        }
        Ok(out)
    }

    fn next_seq(&self) -> Result<i64, DbError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM images", [], |r| {
                r.get(0)
            })?)
    }

    /// Record a new image (as `img.status`) and point `name` at it, in one
    /// transaction. Returns its seq.
    pub fn insert(&mut self, img: &ImageRow, name: &str) -> Result<i64, DbError> {
        let tx = self.conn.transaction()?;
        let seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM images", [], |r| {
            r.get(0)
        })?;
        let metadata =
            serde_json::to_string(&img.metadata).map_err(|e| damaged(img.digest.to_string(), e))?;
        tx.execute(
            &format!("INSERT INTO images ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"),
            params![
                img.digest.to_string(),
                img.repo,
                img.status.as_str(),
                img.error,
                img.error_code,
                img.size_bytes.map(|n| n as i64),
                metadata,
                img.platform.to_string(),
                img.format,
                img.disk_path,
                img.created_at,
                seq
            ],
        )?;
        tx.execute(
            "INSERT INTO names (name, digest) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET digest = excluded.digest",
            params![name, img.digest.to_string()],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Point `name` at `digest` (a tag that moved, or a new tag).
    pub fn set_name(&self, name: &str, digest: &Digest) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO names (name, digest) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET digest = excluded.digest",
            params![name, digest.to_string()],
        )?;
        Ok(())
    }

    pub fn remove_name(&self, name: &str) -> Result<bool, DbError> {
        Ok(self
            .conn
            .execute("DELETE FROM names WHERE name = ?1", [name])?
            > 0)
    }

    pub fn remove_image(&self, digest: &Digest) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM images WHERE digest = ?1", [digest.to_string()])?;
        Ok(())
    }

    /// Queue an image (again) at the back: pending, a new seq, no error.
    /// Returns the new seq.
    pub fn requeue(&self, digest: &Digest) -> Result<i64, DbError> {
        let seq = self.next_seq()?;
        self.conn.execute(
            "UPDATE images SET status = 'pending', error = NULL, error_code = NULL, \
             size_bytes = NULL, seq = ?2 WHERE digest = ?1",
            params![digest.to_string(), seq],
        )?;
        Ok(seq)
    }

    /// Change the status of the build generation `seq`; false when the
    /// record is gone or belongs to another generation.
    pub fn set_status(&self, digest: &Digest, seq: i64, s: Status) -> Result<bool, DbError> {
        Ok(self.conn.execute(
            "UPDATE images SET status = ?3 WHERE digest = ?1 AND seq = ?2",
            params![digest.to_string(), seq, s.as_str()],
        )? > 0)
    }

    pub fn set_ready(&self, digest: &Digest, seq: i64, size: u64) -> Result<bool, DbError> {
        Ok(self.conn.execute(
            "UPDATE images SET status = 'ready', size_bytes = ?3, error = NULL, \
             error_code = NULL WHERE digest = ?1 AND seq = ?2",
            params![digest.to_string(), seq, size as i64],
        )? > 0)
    }

    pub fn set_failed(
        &self,
        digest: &Digest,
        seq: i64,
        code: &str,
        error: &str,
    ) -> Result<bool, DbError> {
        Ok(self.conn.execute(
            "UPDATE images SET status = 'failed', error = ?4, error_code = ?3 \
             WHERE digest = ?1 AND seq = ?2",
            params![digest.to_string(), seq, code, error],
        )? > 0)
    }

    /// A tag pushed to `/v2` (repository without host): its digest and
    /// media type.
    pub fn pushed_tag(&self, repo: &str, tag: &str) -> Result<Option<(Digest, String)>, DbError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT digest, media_type FROM pushed_tags WHERE repo = ?1 AND tag = ?2",
                [repo, tag],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(d, m)| {
            let d = d
                .parse()
                .map_err(|e| damaged(format!("pushed tag {repo}:{tag}"), e))?;
            Ok((d, m))
        })
        .transpose()
    }

    /// Point a pushed tag at `digest`; returns the digest it pointed at
    /// before, if another.
    pub fn set_pushed_tag(
        &self,
        repo: &str,
        tag: &str,
        digest: &Digest,
        media_type: &str,
    ) -> Result<Option<Digest>, DbError> {
        let before = self.pushed_tag(repo, tag)?.map(|(d, _)| d);
        self.conn.execute(
            "INSERT INTO pushed_tags (repo, tag, digest, media_type) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(repo, tag) DO UPDATE SET digest = excluded.digest, \
             media_type = excluded.media_type",
            params![repo, tag, digest.to_string(), media_type],
        )?;
        Ok(before.filter(|b| b != digest))
    }

    /// The tags pushed to a repository, sorted.
    pub fn pushed_tags(&self, repo: &str) -> Result<Vec<String>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT tag FROM pushed_tags WHERE repo = ?1 ORDER BY tag")?;
        let v = st
            .query_map([repo], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    pub fn count_by_status(&self) -> Result<Vec<(Status, u64)>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT status, COUNT(*) FROM images GROUP BY status")?;
        let v = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .filter_map(|x| x.ok())
            .filter_map(|(s, n)| Some((Status::parse(&s)?, n as u64)))
            .collect();
        Ok(v)
    }

    pub fn ready_bytes(&self) -> Result<u64, DbError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM images WHERE status = 'ready'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn img(c: char) -> ImageRow {
        let digest = d(c);
        ImageRow {
            disk_path: disk_rel_path("r/x", &digest, "ext4"),
            digest,
            repo: "r/x".into(),
            status: Status::Pending,
            error: None,
            error_code: None,
            size_bytes: None,
            metadata: ImageMetadata::default(),
            platform: "linux/amd64".parse().unwrap(),
            format: "ext4".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            seq: 0,
        }
    }

    #[test]
    fn state_survives_reopening_and_a_superseded_generation_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        let (a, b) = (d('a'), d('b'));
        {
            let mut db = Db::open(&p).unwrap();
            let sa = db.insert(&img('a'), "r/x:1").unwrap();
            let sb = db.insert(&img('b'), "r/x:2").unwrap();
            db.set_name("r/x:3", &a).unwrap();
            assert!(db.set_status(&a, sa, Status::Pulling).unwrap());
            assert!(db.set_ready(&b, sb, 10).unwrap());
            let newer = db.requeue(&a).unwrap();
            assert!(!db.set_ready(&a, sa, 1).unwrap(), "an old generation");
            assert!(db.set_status(&a, newer, Status::Pulling).unwrap());
        }
        let db = Db::open(&p).unwrap();
        assert_eq!(db.image(&a).unwrap().unwrap().status, Status::Pulling);
        assert_eq!(db.names_of(&a).unwrap(), vec!["r/x:1", "r/x:3"]);
        db.remove_image(&a).unwrap();
        assert_eq!(db.digest_of("r/x:1").unwrap(), None, "names go with it");
        assert_eq!(db.ready_bytes().unwrap(), 10);
    }

    #[test]
    fn a_schema_1_database_gets_relative_disk_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute(
                &format!("INSERT INTO images ({COLS}) VALUES (?1,'r/x','ready',NULL,NULL,5,'{{}}','linux/amd64','erofs','/old/place/images/r/x/aa/rootfs.erofs','t',1)"),
                [d('a').to_string()],
            )
            .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        let db = Db::open(&p).unwrap();
        let r = db.image(&d('a')).unwrap().unwrap();
        assert_eq!(
            r.disk_path,
            format!("images/r/x/{}/rootfs.erofs", "a".repeat(64))
        );
    }

    #[test]
    fn a_row_that_does_not_decode_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let mut db = Db::open(&p).unwrap();
            db.insert(&img('a'), "r/x:1").unwrap();
            db.conn
                .execute("UPDATE images SET status = 'ready\u{1}'", [])
                .unwrap();
        }
        let e = Db::open(&p).err().expect("refused");
        assert!(e.to_string().contains("status"), "{e}");
    }
}
