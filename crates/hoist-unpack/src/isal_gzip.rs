//! gzip inflated by ISA-L, read straight out of the caller's `BufRead`
//! buffer. The bindings and the library come from `isal-rs`; its own
//! reader is not used: it shifts its 16 KiB input buffer down on every
//! step (measured: 5.6 % of an erofs export's samples in `memcpy`), where
//! feeding ISA-L the `BufRead`'s buffer and consuming what it took copies
//! nothing.

use std::io::{self, BufRead, Read};

use isal::isal_sys::igzip_lib as sys;

pub struct GzipReader<R: BufRead> {
    inner: R,
    // Boxed: ISA-L's state is large (tens of KiB of tables).
    st: Box<sys::inflate_state>,
}

// SAFETY: the state holds raw pointers only while `isal_inflate` runs,
// into buffers this value owns or borrows for that call.
unsafe impl<R: BufRead + Send> Send for GzipReader<R> {}

fn fresh(st: &mut sys::inflate_state) {
    // SAFETY: `st` is a valid, exclusively borrowed inflate state.
    unsafe { sys::isal_inflate_reset(st) };
    // Parse the gzip header, check the CRC and size in the trailer.
    st.crc_flag = sys::ISAL_GZIP;
}

impl<R: BufRead> GzipReader<R> {
    pub fn new(inner: R) -> GzipReader<R> {
        let mut st: Box<std::mem::MaybeUninit<sys::inflate_state>> = Box::new_uninit();
        // SAFETY: isal_inflate_init initialises every field of the state.
        let mut st = unsafe {
            sys::isal_inflate_init(st.as_mut_ptr());
            st.assume_init()
        };
        fresh(&mut st);
        GzipReader { inner, st }
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<R: BufRead> Read for GzipReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut started = false;
        loop {
            if self.st.block_state == sys::isal_block_state_ISAL_BLOCK_FINISH {
                // A member ended: another may follow (multi-member layers).
                if self.inner.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                fresh(&mut self.st);
            }
            let input = self.inner.fill_buf()?;
            let in_len = input.len();
            if in_len == 0 && started {
                return Err(invalid("gzip stream ends in the middle".into()));
            }
            self.st.next_in = input.as_ptr().cast_mut();
            self.st.avail_in = in_len as u32;
            self.st.next_out = out.as_mut_ptr();
            self.st.avail_out = out.len().min(u32::MAX as usize) as u32;
            // SAFETY: next_in/avail_in describe the BufRead's live buffer
            // (ISA-L only reads it), next_out/avail_out the caller's output.
            let ret = unsafe { sys::isal_inflate(&mut *self.st) };
            let consumed = in_len - self.st.avail_in as usize;
            let produced = out.len().min(u32::MAX as usize) - self.st.avail_out as usize;
            self.st.next_in = std::ptr::null_mut();
            self.st.next_out = std::ptr::null_mut();
            self.inner.consume(consumed);
            if ret < 0 {
                return Err(invalid(match ret {
                    sys::ISAL_INCORRECT_CHECKSUM => "gzip checksum mismatch".into(),
                    sys::ISAL_INVALID_WRAPPER => "not a gzip stream".into(),
                    r => format!("corrupt gzip stream (ISA-L error {r})"),
                }));
            }
            if produced > 0 {
                return Ok(produced);
            }
            if self.st.block_state == sys::isal_block_state_ISAL_BLOCK_FINISH {
                continue;
            }
            if in_len == 0 {
                return Err(invalid("gzip stream ends in the middle".into()));
            }
            if consumed == 0 {
                return Err(invalid("corrupt gzip stream (no progress)".into()));
            }
            started = true;
        }
    }
}
