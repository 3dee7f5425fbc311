//! A bounded, ordered queue of byte chunks between a producer (a layer's
//! inflater) and its consumer (the tar reader), that never blocks the
//! producer: past `mem_max` bytes held in memory, chunks go to an unnamed
//! temp file (`O_TMPFILE`: nothing to clean up after a kill) and are read
//! back in order. So a later layer can be inflated ahead while an earlier
//! one is still being applied, within a fixed memory budget.
//!
//! Order is kept by one rule: a chunk goes to memory only while nothing is
//! waiting on disk; every chunk in memory therefore precedes every chunk
//! on disk.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// A chunk of inflated tar, shared by the spool and the hasher. An
/// `Arc<Vec<u8>>`, not `Arc<[u8]>`: making the latter from a `Vec` copies
/// every byte (measured: 8 % of an export's samples).
pub(crate) type Chunk = Arc<Vec<u8>>;

/// Chunk buffers handed back by whoever held them last, so the inflater
/// need not allocate (and zero) 256 KiB for every chunk.
#[derive(Default)]
pub(crate) struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    const KEEP: usize = 8;

    /// A buffer of `len` bytes whose contents are not promised.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        v.resize(len, 0);
        v
    }

    /// Give a chunk back, if no one else holds it.
    pub fn give(&self, c: Chunk) {
        if let Ok(v) = Arc::try_unwrap(c) {
            let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if p.len() < Self::KEEP {
                p.push(v);
            }
        }
    }
}

#[derive(Default)]
struct State {
    mem: VecDeque<Chunk>,
    mem_bytes: usize,
    file: Option<Arc<File>>,
    /// Lengths of the chunks on disk, in order, and where they are.
    disk: VecDeque<usize>,
    disk_read: u64,
    disk_written: u64,
    /// The producer is done (`Ok`) or failed (`Err`).
    end: Option<Result<(), String>>,
    /// The consumer went away: the producer may stop.
    abandoned: bool,
}

pub(crate) struct Spool {
    state: Mutex<State>,
    cv: Condvar,
    mem_max: usize,
    dir: PathBuf,
}

impl Spool {
    pub fn new(mem_max: usize, dir: PathBuf) -> Arc<Spool> {
        Arc::new(Spool {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            mem_max,
            dir,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a chunk; `false` when the consumer has gone away.
    pub fn push(&self, c: Chunk) -> io::Result<bool> {
        let mut st = self.lock();
        if st.abandoned {
            return Ok(false);
        }
        if st.disk.is_empty() && st.mem_bytes + c.len() <= self.mem_max {
            st.mem_bytes += c.len();
            st.mem.push_back(c);
        } else {
            let file = match &st.file {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(tempfile::tempfile_in(&self.dir)?);
                    st.file = Some(f.clone());
                    f
                }
            };
            let at = st.disk_written;
            // The write happens under the lock: the consumer reads only
            // what was counted, and counting follows the write.
            file.write_all_at(&c, at)?;
            st.disk_written += c.len() as u64;
            st.disk.push_back(c.len());
        }
        drop(st);
        self.cv.notify_all();
        Ok(true)
    }

    pub fn finish(&self, r: Result<(), String>) {
        self.lock().end = Some(r);
        self.cv.notify_all();
    }

    /// The next chunk in order; `Ok(None)` at the end.
    pub fn pop(&self) -> io::Result<Option<Chunk>> {
        let mut st = self.lock();
        loop {
            if let Some(c) = st.mem.pop_front() {
                st.mem_bytes -= c.len();
                return Ok(Some(c));
            }
            if let Some(len) = st.disk.pop_front() {
                let at = st.disk_read;
                st.disk_read += len as u64;
                let file = st.file.clone().expect("a chunk on disk has a file");
                if st.disk.is_empty() {
                    // Drained: start the file over, so it never grows past
                    // what is waiting at once.
                    st.disk_read = 0;
                    st.disk_written = 0;
                    st.file = None;
                }
                drop(st);
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, at)?;
                return Ok(Some(Arc::new(buf)));
            }
            match &st.end {
                Some(Ok(())) => return Ok(None),
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())),
                None => st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }

    /// The consumer is done with this spool (early, on an error).
    pub fn abandon(&self) {
        let mut st = self.lock();
        st.abandoned = true;
        st.mem.clear();
        st.mem_bytes = 0;
        st.disk.clear();
        st.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_out_in_order_across_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::new(1000, dir.path().to_path_buf());
        let producer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    let c: Chunk = Arc::new(vec![(i % 251) as u8; 97 + (i as usize % 300)]);
                    assert!(s.push(c).unwrap());
                }
                s.finish(Ok(()));
            })
        };
        let mut i = 0u32;
        while let Some(c) = s.pop().unwrap() {
            assert_eq!(c.len(), 97 + (i as usize % 300), "chunk {i}");
            assert!(c.iter().all(|&b| b == (i % 251) as u8), "chunk {i}");
            i += 1;
            if i.is_multiple_of(7) {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        producer.join().unwrap();
        assert_eq!(i, 500);
    }
}
