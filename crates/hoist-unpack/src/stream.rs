//! A layer blob as an uncompressed stream: decompression and both digests
//! (compressed blob, uncompressed diff_id) run on their own thread, feeding
//! the tar reader through a bounded channel, so inflating and writing files
//! overlap as `tar -xzf` does with its gzip child.

use std::io::{self, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use hoist_spec::media::Compression;
use hoist_spec::{Algorithm, Digest, Hasher};

const CHUNK: usize = 256 << 10;
const DEPTH: usize = 16;

/// Digests of what was read, both streams drained to EOF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigests {
    /// `None` unless the blob digest was asked for.
    pub compressed: Option<Digest>,
    pub uncompressed: Digest,
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

pub struct LayerStream {
    rx: Receiver<Vec<u8>>,
    /// The diff_id is hashed here, on the reading thread: inflating alone
    /// keeps the other thread busy enough.
    diff: Option<Hasher>,
    cur: Vec<u8>,
    pos: usize,
    worker: Option<JoinHandle<io::Result<Option<Digest>>>>,
    /// Set once the worker has been joined.
    result: Option<Result<StreamDigests, String>>,
}

fn pump<R: Read>(mut r: R, tx: &std::sync::mpsc::SyncSender<Vec<u8>>) -> io::Result<bool> {
    loop {
        let mut buf = vec![0u8; CHUNK];
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
        if tx.send(buf).is_err() {
            return Ok(false); // the reader gave up
        }
    }
}

impl LayerStream {
    /// Start decompressing `blob`. The uncompressed stream is hashed with
    /// `diff_algo`; the blob itself only if `blob_algo` is given (it was
    /// verified when it entered the cache).
    pub fn new<R: Read + Send + 'static>(
        blob: R,
        compression: Compression,
        blob_algo: Option<Algorithm>,
        diff_algo: Algorithm,
    ) -> LayerStream {
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        let worker = std::thread::spawn(move || -> io::Result<Option<Digest>> {
            let tee = Tee {
                inner: blob,
                hasher: blob_algo.map(Hasher::new),
            };
            let input = BufReader::with_capacity(CHUNK, tee);
            let mut input = match compression {
                Compression::None => {
                    let mut input = input;
                    pump(&mut input, &tx)?;
                    input
                }
                Compression::Gzip => {
                    // Multi-member: a layer may hold several gzip members,
                    // and the single-member decoder silently stops after one.
                    let mut d = flate2::bufread::MultiGzDecoder::new(input);
                    pump(&mut d, &tx)?;
                    d.into_inner()
                }
                Compression::Zstd => {
                    let mut d = zstd::stream::read::Decoder::with_buffer(input)?;
                    pump(&mut d, &tx)?;
                    d.finish()
                }
            };
            // Whatever follows the compressed stream still counts for the
            // blob digest.
            io::copy(&mut input, &mut io::sink())?;
            Ok(input.into_inner().hasher.map(Hasher::finish))
        });
        LayerStream {
            rx,
            diff: Some(Hasher::new(diff_algo)),
            cur: Vec::new(),
            pos: 0,
            worker: Some(worker),
            result: None,
        }
    }

    /// Drain the rest of the stream to EOF and return both digests.
    pub fn finish(mut self) -> io::Result<StreamDigests> {
        io::copy(&mut self, &mut io::sink())?;
        match self.join() {
            Ok(d) => Ok(d),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn join(&mut self) -> Result<StreamDigests, String> {
        if self.result.is_none() {
            let w = self.worker.take().expect("worker present until joined");
            let diff = self.diff.take().expect("hashed once");
            self.result = Some(match w.join() {
                Ok(Ok(compressed)) => Ok(StreamDigests {
                    compressed,
                    uncompressed: diff.finish(),
                }),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("decompression thread panicked".into()),
            });
        }
        self.result.clone().expect("just set")
    }
}

impl Read for LayerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    if let Some(h) = self.diff.as_mut() {
                        h.update(&chunk);
                    }
                    self.cur = chunk;
                    self.pos = 0;
                }
                // The worker has ended: a decompression error surfaces
                // here, where the tar reader sees it.
                Err(_) => {
                    return match self.join() {
                        Ok(_) => Ok(0),
                        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                    }
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
