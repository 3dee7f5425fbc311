//! A layer blob as an uncompressed stream, in stages that run on threads
//! of their own so that no single core does everything:
//!
//! ```text
//! blob file ─▶ read + sha256 of the blob (when asked) ─▶ inflate ─┬─▶ spool ─▶ tar reader (apply)
//!                                                                  └─▶ sha256 (diff_id), when asked
//! ```
//!
//! The spool holds a bounded amount in memory and the rest in an unnamed
//! temp file, so a later layer can be inflated ahead (its stream is made
//! early, and waits at a gate for the previous layer's inflate to end)
//! while an earlier one is still being applied.
//!
//! gzip is inflated by ISA-L (`isal` feature, Debian's libisal) or by
//! zlib-rs; both give the same bytes, and both check the gzip CRC.

use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use hoist_spec::media::Compression;
use hoist_spec::{Algorithm, Digest, Hasher};

use crate::spool::{Chunk, Pool, Spool};

const CHUNK: usize = 256 << 10;

/// Which gzip inflater this build uses.
pub fn gzip_backend() -> &'static str {
    if cfg!(feature = "isal") {
        "isa-l"
    } else {
        "zlib-rs"
    }
}

#[cfg(feature = "isal")]
fn gzip<'a, R: Read + 'a>(r: R) -> Box<dyn Read + 'a> {
    // Multi-member streams are read whole: the decoder starts over after
    // each member while input remains.
    Box::new(crate::isal_gzip::GzipReader::new(BufReader::with_capacity(
        CHUNK, r,
    )))
}

#[cfg(not(feature = "isal"))]
fn gzip<'a, R: Read + 'a>(r: R) -> Box<dyn Read + 'a> {
    // Multi-member: a layer may hold several gzip members, and the
    // single-member decoder silently stops after one.
    Box::new(flate2::bufread::MultiGzDecoder::new(
        BufReader::with_capacity(CHUNK, r),
    ))
}

/// Opens once: the previous layer's inflate has ended (however it ended).
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.0 .1.notify_all();
    }
    fn wait(&self) {
        let mut open = self.0 .0.lock().unwrap_or_else(PoisonError::into_inner);
        while !*open {
            open = self.0 .1.wait(open).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// How a layer's stream is made.
#[derive(Clone)]
pub struct StreamOptions {
    pub compression: Compression,
    /// Hash the blob as read (a damaged blob cannot pass).
    pub blob_algo: Option<Algorithm>,
    /// Hash the uncompressed stream (the diff_id); `None` when the store
    /// recorded that this blob, verified, inflates to the diff_id.
    pub diff_algo: Option<Algorithm>,
    /// Where the spool overflows to.
    pub spool_dir: PathBuf,
    /// Bytes the spool holds in memory before it goes to disk.
    pub spool_mem: usize,
    /// Bytes the spool may hold on disk; past them the inflater waits (0:
    /// memory only).
    pub spool_disk: u64,
    /// Start inflating only when this opens.
    pub after: Option<Gate>,
    /// Stages on threads of their own (the default). `false` runs reading,
    /// both hashes and inflating on one thread, as hoist did before: kept
    /// for the benchmarks that measure what the split buys.
    pub split: bool,
}

/// Digests of what was read, both streams drained to EOF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigests {
    /// `None` unless the blob digest was asked for.
    pub compressed: Option<Digest>,
    /// `None` unless the diff_id was asked for.
    pub uncompressed: Option<Digest>,
}

/// What the inflate stage learned: the blob's digest, and the diff_id
/// when it was hashed on that thread.
type Inflated = (Option<Digest>, Option<Digest>);

/// The uncompressed stream of one layer.
pub struct LayerStream {
    spool: Arc<Spool>,
    pool: Arc<Pool>,
    cur: Chunk,
    pos: usize,
    inflated: Gate,
    worker: Option<JoinHandle<io::Result<Inflated>>>,
    hasher: Option<JoinHandle<Digest>>,
    /// Set once the worker has been joined.
    result: Option<Result<StreamDigests, String>>,
}

/// Inflate `r` into chunks, to the spool and (when hashing) the hasher.
fn pump(
    mut r: impl Read,
    pool: &Pool,
    spool: &Spool,
    hash: Option<&SyncSender<Chunk>>,
    mut inline: Option<&mut Hasher>,
) -> io::Result<bool> {
    loop {
        let mut buf = pool.take(CHUNK);
        let mut filled = 0;
        while filled < CHUNK {
            let n = r.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(true);
        }
        buf.truncate(filled);
        let chunk: Chunk = Arc::new(buf);
        if let Some(h) = inline.as_deref_mut() {
            h.update(&chunk);
        }
        if let Some(tx) = hash {
            if tx.send(chunk.clone()).is_err() {
                return Ok(false);
            }
        }
        if !spool.push(chunk)? {
            return Ok(false); // the reader gave up
        }
    }
}

impl LayerStream {
    /// Start the stages for `blob`.
    pub fn new<R: Read + Send + 'static>(blob: R, opts: StreamOptions) -> LayerStream {
        let spool = Spool::new(opts.spool_mem, opts.spool_disk, opts.spool_dir.clone());
        let pool = Arc::new(Pool::default());
        let inflated = Gate::default();
        let (hash_tx, hasher) = match opts.diff_algo.filter(|_| opts.split) {
            Some(algo) => {
                let (tx, rx) = sync_channel::<Chunk>(8);
                let pool = pool.clone();
                let h = std::thread::spawn(move || {
                    let mut h = Hasher::new(algo);
                    for c in rx {
                        h.update(&c);
                        pool.give(c);
                    }
                    h.finish()
                });
                (Some(tx), Some(h))
            }
            None => (None, None),
        };
        let (sp, gate, pl) = (spool.clone(), inflated.clone(), pool.clone());
        let worker = std::thread::spawn(move || -> io::Result<Inflated> {
            if let Some(g) = &opts.after {
                g.wait();
            }
            let r = inflate(blob, &opts, &pl, &sp, hash_tx);
            sp.finish(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            gate.open();
            r
        });
        LayerStream {
            spool,
            pool,
            cur: Arc::new(Vec::new()),
            pos: 0,
            inflated,
            worker: Some(worker),
            hasher,
            result: None,
        }
    }

    /// Opens when this layer's inflate has ended: the next layer's stream
    /// may start then.
    pub fn inflated(&self) -> Gate {
        self.inflated.clone()
    }

    /// Drain the rest of the stream to EOF and return the digests.
    pub fn finish(mut self) -> io::Result<StreamDigests> {
        io::copy(&mut self, &mut io::sink())?;
        self.join().map_err(io::Error::other)
    }

    fn join(&mut self) -> Result<StreamDigests, String> {
        if self.result.is_none() {
            let r = match self.worker.take().map(JoinHandle::join) {
                Some(Ok(Ok((compressed, inline)))) => {
                    let uncompressed = match self.hasher.take().map(JoinHandle::join) {
                        Some(Ok(d)) => Some(d),
                        Some(Err(_)) => return Err("the hashing thread panicked".into()),
                        None => inline,
                    };
                    Ok(StreamDigests {
                        compressed,
                        uncompressed,
                    })
                }
                Some(Ok(Err(e))) => Err(e.to_string()),
                Some(Err(_)) => Err("the decompression thread panicked".into()),
                None => Err("the stream was already finished".into()),
            };
            self.result = Some(r);
        }
        self.result
            .clone()
            .unwrap_or_else(|| Err("the stream was not joined".into()))
    }
}

/// The compressed bytes, as the read stage hands them over: when the blob
/// is hashed, that happens on a thread of its own, so the inflater does
/// nothing but inflate.
struct Compressed {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Buffers going back to the reader, to be filled again.
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Compressed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    let done = std::mem::replace(&mut self.cur, c);
                    let _ = self.back.try_send(done);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The read stage: the blob in chunks, hashed, to the inflater; it reads
/// to EOF (what follows the compressed stream counts for the digest).
fn read_stage<R: Read + Send + 'static>(
    mut blob: R,
    algo: Algorithm,
) -> (Compressed, JoinHandle<Option<Digest>>) {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(8);
    let (back, returned) = sync_channel::<Vec<u8>>(4);
    let h = std::thread::spawn(move || {
        let mut hasher = Hasher::new(algo);
        loop {
            let mut buf = returned.try_recv().unwrap_or_default();
            buf.resize(CHUNK, 0);
            match blob.read(&mut buf) {
                Ok(0) => return Some(hasher.finish()),
                Ok(n) => {
                    buf.truncate(n);
                    hasher.update(&buf);
                    if tx.send(Ok(buf)).is_err() {
                        return None; // the inflater stopped
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return None;
                }
            }
        }
    });
    (
        Compressed {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
        },
        h,
    )
}

struct Tee<R> {
    inner: R,
    hasher: Option<Hasher>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The inflate stage: decompress into the spool (and the diff_id hasher),
/// then drain whatever follows the compressed stream. Returns the blob's
/// digest and, when not split, the diff_id hashed here.
fn inflate<R: Read + Send + 'static>(
    blob: R,
    opts: &StreamOptions,
    pool: &Pool,
    spool: &Spool,
    hash: Option<SyncSender<Chunk>>,
) -> io::Result<Inflated> {
    let (input, reader): (Box<dyn Read>, _) = match opts.blob_algo {
        Some(algo) if opts.split => {
            let (c, h) = read_stage(blob, algo);
            (Box::new(c), Some(h))
        }
        _ => (Box::new(blob), None),
    };
    // Not split: the blob is hashed here, as it is read.
    let mut input = Tee {
        inner: input,
        hasher: opts.blob_algo.filter(|_| !opts.split).map(Hasher::new),
    };
    let mut inline = opts.diff_algo.filter(|_| !opts.split).map(Hasher::new);
    let whole = {
        let input = &mut input;
        let h = inline.as_mut();
        match opts.compression {
            Compression::None => pump(
                BufReader::with_capacity(CHUNK, input),
                pool,
                spool,
                hash.as_ref(),
                h,
            )?,
            Compression::Gzip => pump(gzip(input), pool, spool, hash.as_ref(), h)?,
            Compression::Zstd => {
                let d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                    CHUNK, input,
                ))?;
                pump(d, pool, spool, hash.as_ref(), h)?
            }
        }
    };
    drop(hash);
    if whole {
        io::copy(&mut input, &mut io::sink())?;
    }
    let here = input.hasher.take().map(Hasher::finish);
    drop(input);
    let blob_digest = match reader.map(JoinHandle::join) {
        Some(Ok(Some(d))) => Some(d),
        Some(Ok(None)) => return Err(io::Error::other("the blob could not be read whole")),
        Some(Err(_)) => return Err(io::Error::other("the reading thread panicked")),
        None => here,
    };
    Ok((blob_digest, inline.map(Hasher::finish)))
}

impl Read for LayerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.spool.pop() {
                Ok(Some(chunk)) => {
                    let done = std::mem::replace(&mut self.cur, chunk);
                    self.pool.give(done);
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                // A decompression error surfaces here, where the tar
                // reader sees it.
                Err(e) => return Err(e),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for LayerStream {
    fn drop(&mut self) {
        // Stop a producer that is still running (its reader gave up).
        self.spool.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(parts: &[&[u8]]) -> Vec<u8> {
        // Several members, as some layers have.
        let mut out = Vec::new();
        for p in parts {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(p).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    }

    fn read_all(blob: Vec<u8>, split: bool) -> io::Result<(Vec<u8>, StreamDigests)> {
        let dir = std::env::temp_dir();
        let mut s = LayerStream::new(
            io::Cursor::new(blob),
            StreamOptions {
                compression: Compression::Gzip,
                blob_algo: Some(Algorithm::Sha256),
                diff_algo: Some(Algorithm::Sha256),
                spool_dir: dir,
                spool_mem: 64 << 10,
                // Both spool modes: to disk (64 KiB in memory, far less
                // than the stream) and memory only.
                spool_disk: if split { u64::MAX } else { 0 },
                after: None,
                split,
            },
        );
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let d = s.finish()?;
        Ok((out, d))
    }

    /// Whichever inflater this build uses, and whether the stages are
    /// split or not, the bytes and both digests are the same as zlib's.
    #[test]
    fn every_backend_and_stage_layout_gives_the_same_bytes_and_digests() {
        let a: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b = b"second member".to_vec();
        let blob = gz(&[&a, &b]);
        let mut want = a.clone();
        want.extend(&b);
        for split in [true, false] {
            let (got, d) = read_all(blob.clone(), split).unwrap();
            assert_eq!(got.len(), want.len(), "split {split}");
            assert!(got == want, "split {split}: bytes differ");
            assert_eq!(d.uncompressed, Some(Digest::sha256_of(&want)));
            assert_eq!(d.compressed, Some(Digest::sha256_of(&blob)));
        }
        let mut z = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut z)
            .unwrap();
        assert!(z == want);
    }

    #[test]
    fn a_truncated_or_damaged_gzip_stream_is_an_error_with_every_backend() {
        let a: Vec<u8> = (0..500_000u32).map(|i| (i % 13) as u8).collect();
        let blob = gz(&[&a]);
        for split in [true, false] {
            let cut = blob[..blob.len() / 2].to_vec();
            assert!(read_all(cut, split).is_err(), "truncated, split {split}");
            let mut bad = blob.clone();
            let n = bad.len();
            bad[n - 6] ^= 0x55; // the CRC trailer
            assert!(read_all(bad, split).is_err(), "bad CRC, split {split}");
        }
    }
}
