//! The service's durable state: SQLite in WAL mode with `synchronous=FULL`,
//! so a committed change survives `kill -9` and power loss. Two tables:
//! `images`, keyed by platform manifest digest (the build unit: two tags
//! of one digest build once), and `names`, the tags and digest references
//! that point at them. A status change is committed before the work it
//! describes starts, so a restart can always tell what to re-queue.

use std::path::Path;

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
    pub digest: String,
    /// `registry/repository`: where a build by digest pulls from.
    pub repo: String,
    pub status: Status,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub size_bytes: Option<u64>,
    /// `hoist::ImageMetadata` as JSON.
    pub metadata: String,
    pub platform: String,
    pub format: String,
    pub disk_path: Option<String>,
    pub created_at: String,
    #[cfg_attr(not(test), allow(dead_code))]
    pub seq: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("state database: {0}")]
pub struct DbError(#[from] rusqlite::Error);

pub struct Db {
    conn: Connection,
}

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
PRAGMA user_version = 1;
";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        digest: r.get(0)?,
        repo: r.get(1)?,
        status: Status::parse(&r.get::<_, String>(2)?).unwrap_or(Status::Failed),
        error: r.get(3)?,
        error_code: r.get(4)?,
        size_bytes: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
        metadata: r.get(6)?,
        platform: r.get(7)?,
        format: r.get(8)?,
        disk_path: r.get(9)?,
        created_at: r.get(10)?,
        seq: r.get(11)?,
    })
}

const COLS: &str = "digest, repo, status, error, error_code, size_bytes, metadata, platform, \
                    format, disk_path, created_at, seq";

impl Db {
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Db { conn })
    }

    pub fn image(&self, digest: &str) -> Result<Option<ImageRow>, DbError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLS} FROM images WHERE digest = ?1"),
                [digest],
                row,
            )
            .optional()?)
    }

    pub fn digest_of(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .query_row("SELECT digest FROM names WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn names_of(&self, digest: &str) -> Result<Vec<String>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name FROM names WHERE digest = ?1 ORDER BY name")?;
        let v = st
            .query_map([digest], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Every (name, image) pair, plus images that no name points at.
    pub fn list(&self) -> Result<Vec<(Option<String>, ImageRow)>, DbError> {
        let cols: String = COLS
            .split(", ")
            .map(|c| format!("i.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {cols}, n.name FROM images i LEFT JOIN names n ON n.digest = i.digest \
             ORDER BY i.seq, n.name"
        ))?;
        let v = st
            .query_map([], |r| Ok((r.get::<_, Option<String>>(12)?, row(r)?)))?
            .collect::<Result<_, _>>()?;
        Ok(v)
    }

    /// Unfinished images, oldest first: what a restart re-queues.
    pub fn unfinished(&self) -> Result<Vec<ImageRow>, DbError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLS} FROM images WHERE status IN ('pending','pulling','converting') \
             ORDER BY seq"
        ))?;
        let v = st.query_map([], row)?.collect::<Result<_, _>>()?;
        Ok(v)
    }

    fn next_seq(&self) -> Result<i64, DbError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM images", [], |r| {
                r.get(0)
            })?)
    }

    /// Record a new image as pending and point `name` at it, in one
    /// transaction.
    pub fn insert_pending(&mut self, img: &ImageRow, name: &str) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        let seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM images", [], |r| {
            r.get(0)
        })?;
        tx.execute(
            &format!("INSERT INTO images ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"),
            params![
                img.digest,
                img.repo,
                Status::Pending.as_str(),
                None::<String>,
                None::<String>,
                None::<i64>,
                img.metadata,
                img.platform,
                img.format,
                img.disk_path,
                img.created_at,
                seq
            ],
        )?;
        tx.execute(
            "INSERT INTO names (name, digest) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET digest = excluded.digest",
            params![name, img.digest],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Point `name` at `digest` (a tag that moved, or a new tag).
    pub fn set_name(&self, name: &str, digest: &str) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO names (name, digest) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET digest = excluded.digest",
            params![name, digest],
        )?;
        Ok(())
    }

    pub fn remove_name(&self, name: &str) -> Result<bool, DbError> {
        Ok(self
            .conn
            .execute("DELETE FROM names WHERE name = ?1", [name])?
            > 0)
    }

    pub fn remove_image(&self, digest: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM images WHERE digest = ?1", [digest])?;
        Ok(())
    }

    /// Queue a failed image again, at the back.
    pub fn requeue(&self, digest: &str) -> Result<(), DbError> {
        let seq = self.next_seq()?;
        self.conn.execute(
            "UPDATE images SET status = 'pending', error = NULL, error_code = NULL, seq = ?2 \
             WHERE digest = ?1",
            params![digest, seq],
        )?;
        Ok(())
    }

    pub fn set_status(&self, digest: &str, s: Status) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE images SET status = ?2 WHERE digest = ?1",
            params![digest, s.as_str()],
        )?;
        Ok(())
    }

    pub fn set_ready(&self, digest: &str, size: u64, disk_path: &str) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE images SET status = 'ready', size_bytes = ?2, disk_path = ?3, error = NULL, \
             error_code = NULL WHERE digest = ?1",
            params![digest, size as i64, disk_path],
        )?;
        Ok(())
    }

    pub fn set_failed(&self, digest: &str, code: &str, error: &str) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE images SET status = 'failed', error = ?3, error_code = ?2 WHERE digest = ?1",
            params![digest, code, error],
        )?;
        Ok(())
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

    /// Every disk path the state knows (ready or not): GC keeps these.
    pub fn disk_paths(&self) -> Result<Vec<String>, DbError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT disk_path FROM images WHERE disk_path IS NOT NULL")?;
        let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(d: &str) -> ImageRow {
        ImageRow {
            digest: d.into(),
            repo: "r/x".into(),
            status: Status::Pending,
            error: None,
            error_code: None,
            size_bytes: None,
            metadata: "{}".into(),
            platform: "linux/amd64".into(),
            format: "ext4".into(),
            disk_path: Some(format!("/d/{d}")),
            created_at: "2026-01-01T00:00:00Z".into(),
            seq: 0,
        }
    }

    #[test]
    fn state_survives_reopening_and_orders_unfinished_work() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let mut db = Db::open(&p).unwrap();
            db.insert_pending(&img("a"), "r/x:1").unwrap();
            db.insert_pending(&img("b"), "r/x:2").unwrap();
            db.set_name("r/x:3", "a").unwrap();
            db.set_status("a", Status::Pulling).unwrap();
            db.set_ready("b", 10, "/d/b").unwrap();
        }
        let db = Db::open(&p).unwrap();
        let u: Vec<String> = db
            .unfinished()
            .unwrap()
            .into_iter()
            .map(|r| r.digest)
            .collect();
        assert_eq!(u, vec!["a"]);
        assert_eq!(db.names_of("a").unwrap(), vec!["r/x:1", "r/x:3"]);
        db.set_failed("a", "x", "boom").unwrap();
        db.requeue("a").unwrap();
        let a = db.image("a").unwrap().unwrap();
        assert_eq!(a.status, Status::Pending);
        assert!(
            a.seq > db.image("b").unwrap().unwrap().seq,
            "requeued at the back"
        );
        db.remove_image("a").unwrap();
        assert_eq!(
            db.digest_of("r/x:1").unwrap(),
            None,
            "names go with their image"
        );
        assert_eq!(db.ready_bytes().unwrap(), 10);
    }
}
