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
        self.file.file().write_all(buf)?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.file().flush()
    }
}
