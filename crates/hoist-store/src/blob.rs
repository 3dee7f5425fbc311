//! Verified blob writes: stream into a temp file while hashing, then commit
//! by rename only if the size and digest match (umoci's rule).

use std::io::{self, Seek, Write};
use std::path::PathBuf;

use hoist_spec::{Digest, Hasher};

use crate::error::StoreError;
use crate::temp::TempFile;

/// A blob being written. Dropping it without `commit` removes the temp file.
pub struct BlobWriter {
    file: TempFile,
    dest: PathBuf,
    hasher: Hasher,
    written: u64,
    expected: Digest,
    size: u64,
}

impl BlobWriter {
    pub(crate) fn create(
        tmp: PathBuf,
        dest: PathBuf,
        expected: Digest,
        size: u64,
    ) -> Result<BlobWriter, StoreError> {
        let file = TempFile::create(tmp.clone()).map_err(StoreError::io(&tmp))?;
        Ok(BlobWriter {
            file,
            dest,
            hasher: Hasher::new(expected.algorithm()),
            written: 0,
            expected,
            size,
        })
    }

    /// Bytes accepted so far: where a resumed download continues from.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// Start over (a resume that the server answered from byte 0).
    pub fn reset(&mut self) -> io::Result<()> {
        self.file.file().set_len(0)?;
        self.file.file().rewind()?;
        self.hasher = Hasher::new(self.expected.algorithm());
        self.written = 0;
        Ok(())
    }

    /// Whether what was written so far hashes to the expected digest
    /// (`Err`: what it hashes to). `commit` checks again.
    pub fn check(&self) -> Result<(), Digest> {
        let actual = self.hasher.clone().finish();
        if actual == self.expected {
            Ok(())
        } else {
            Err(actual)
        }
    }

    /// Verify size and digest, then fsync and rename into place.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.written != self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        let actual =
            std::mem::replace(&mut self.hasher, Hasher::new(self.expected.algorithm())).finish();
        if actual != self.expected {
            return Err(StoreError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        let dest = self.dest.clone();
        self.file.persist(&dest).map_err(StoreError::io(&dest))
    }
}

/// Both writers: the bytes to the temp file and the hash, counted.
fn append(
    file: &mut TempFile,
    hasher: &mut Hasher,
    written: &mut u64,
    buf: &[u8],
) -> io::Result<usize> {
    file.file().write_all(buf)?;
    hasher.update(buf);
    *written += buf.len() as u64;
    Ok(buf.len())
}

impl Write for BlobWriter {
    /// Refuses to go past the declared size: a server that sends more than it
    /// promised is cut off, never buffered.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {} is larger than its declared {} bytes",
                    self.expected, self.size
                ),
            ));
        }
        append(&mut self.file, &mut self.hasher, &mut self.written, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.file().flush()
    }
}

/// A blob pushed to the service: its digest is known only at the end, so
/// it is hashed (sha256) as it streams into a temp file, and joins the
/// store only through [`UploadWriter::commit`] with a digest that matches.
pub struct UploadWriter {
    file: TempFile,
    blobs: PathBuf,
    hasher: Hasher,
    written: u64,
}

impl UploadWriter {
    pub(crate) fn create(tmp: PathBuf, blobs: PathBuf) -> Result<UploadWriter, StoreError> {
        let file = TempFile::create(tmp.clone()).map_err(StoreError::io(&tmp))?;
        Ok(UploadWriter {
            file,
            blobs,
            hasher: Hasher::new(hoist_spec::Algorithm::Sha256),
            written: 0,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The temp file (for reading back a range, or another algorithm).
    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }

    /// Verify against `expected`, then fsync and rename into place. A
    /// sha512 digest is checked by hashing the file again; a blob already
    /// in the store is kept as it is. On a mismatch nothing is kept.
    pub fn commit(mut self, expected: &Digest) -> Result<(), StoreError> {
        let actual = match expected.algorithm() {
            hoist_spec::Algorithm::Sha256 => {
                std::mem::replace(&mut self.hasher, Hasher::new(hoist_spec::Algorithm::Sha256))
                    .finish()
            }
            other => {
                self.file
                    .file()
                    .flush()
                    .map_err(StoreError::io(self.file.path()))?;
                crate::hash_file(self.file.path(), other)
                    .map_err(StoreError::io(self.file.path()))?
            }
        };
        if actual != *expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let dest = self
            .blobs
            .join(expected.algorithm().as_str())
            .join(expected.hex());
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == self.written) {
            return Ok(()); // dropped: the temp file goes
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        self.file.persist(&dest).map_err(StoreError::io(&dest))
    }
}

impl Write for UploadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        append(&mut self.file, &mut self.hasher, &mut self.written, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.file().flush()
    }
}
