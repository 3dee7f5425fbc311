//! A bounded, ordered queue of byte chunks between a producer (a layer's
//! inflater) and its consumer (the tar reader): past `mem_max` bytes held
//! in memory, chunks go to an unnamed temp file (`O_TMPFILE`: nothing to
//! clean up after a kill) and are read back in order, up to `disk_max`
//! bytes; past both, the producer waits. So a later layer can be inflated
//! ahead while an earlier one is still being applied, within a fixed
//! memory budget.
//!
//! hoist itself uses no disk (`disk_max` 0): measured on rig/big on
//! tmpfs, spilling cost more than the run-ahead bought, because the
//! consumer is the slower side and every spilled byte is written and read
//! once more (lz4 export 2.08 s with it, 1.80 s without; unpack 1.86 s,
//! 1.76 s). `HOIST_BENCH_ABLATE=spill` brings it back for the benchmarks.
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
    /// Bytes waiting on disk past which the producer waits.
    disk_max: u64,
    dir: PathBuf,
}

impl Spool {
    pub fn new(mem_max: usize, disk_max: u64, dir: PathBuf) -> Arc<Spool> {
        Arc::new(Spool {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            mem_max,
            disk_max,
            dir,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a chunk, waiting while memory and disk are both full; `false`
    /// when the consumer has gone away.
    pub fn push(&self, c: Chunk) -> io::Result<bool> {
        let mut st = self.lock();
        let to_mem = loop {
            if st.abandoned {
                return Ok(false);
            }
            // An empty queue takes any chunk, however large.
            let to_mem =
                st.disk.is_empty() && (st.mem_bytes + c.len() <= self.mem_max || st.mem.is_empty());
            let on_disk = st.disk_written - st.disk_read;
            if to_mem || on_disk + c.len() as u64 <= self.disk_max {
                break to_mem;
            }
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        };
        if to_mem {
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
                drop(st);
                self.cv.notify_all();
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
                self.cv.notify_all();
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
        drop(st);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_out_in_order_across_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::new(1000, u64::MAX, dir.path().to_path_buf());
        pass_chunks(&s, 500, 7, |_, _| {});
    }

    /// `n` chunks of varied sizes and contents through `s`, the consumer
    /// pausing every `pause_every` chunks; `after_push` looks at the spool
    /// after each push. Every chunk must come out whole and in order.
    fn pass_chunks(s: &Arc<Spool>, n: u32, pause_every: u32, after_push: fn(&Spool, u32)) {
        let producer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    let c: Chunk = Arc::new(vec![(i % 251) as u8; 97 + (i as usize % 300)]);
                    assert!(s.push(c).unwrap());
                    after_push(&s, i);
                }
                s.finish(Ok(()));
            })
        };
        let mut i = 0u32;
        while let Some(c) = s.pop().unwrap() {
            assert_eq!(c.len(), 97 + (i as usize % 300), "chunk {i}");
            assert!(c.iter().all(|&b| b == (i % 251) as u8), "chunk {i}");
            i += 1;
            if i.is_multiple_of(pause_every) {
                std::thread::sleep(std::time::Duration::from_micros(250));
            }
        }
        producer.join().unwrap();
        assert_eq!(i, n);
    }

    /// Memory-only (`disk_max` 0), as hoist runs it: the producer waits,
    /// order holds, and nothing beyond the budget is ever held.
    #[test]
    fn a_spool_without_disk_makes_the_producer_wait() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::new(1000, 0, dir.path().to_path_buf());
        pass_chunks(&s, 300, 5, |s, i| {
            let st = s.lock();
            assert!(st.disk.is_empty() && st.file.is_none(), "spilled at {i}");
            assert!(
                st.mem_bytes <= 1000 || st.mem.len() == 1,
                "over budget at {i}"
            );
        });
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A producer waiting on a full spool is released when the consumer
    /// gives up (an apply error): it must not hang the export.
    #[test]
    fn a_waiting_producer_stops_when_the_consumer_abandons() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::new(100, 0, dir.path().to_path_buf());
        let producer = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut pushed = 0;
                while s.push(Arc::new(vec![1u8; 60])).unwrap() {
                    pushed += 1;
                    assert!(pushed < 10, "the producer never waited");
                }
                pushed
            })
        };
        while s.lock().mem.is_empty() {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.abandon();
        let pushed = producer.join().unwrap();
        assert!(pushed <= 2, "{pushed} chunks went into a 100-byte spool");
    }
}
