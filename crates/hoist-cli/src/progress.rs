//! Per-blob progress bars on stderr.

use std::collections::HashMap;
use std::sync::Mutex;

use hoist::{Digest, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

impl Progress for Bars {
    fn start(&self, digest: &Digest, size: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(short(digest));
        self.bars.lock().expect("lock").insert(digest.clone(), bar);
    }
    fn position(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = self.bars.lock().expect("lock").get(digest) {
            b.set_position(bytes);
        }
    }
    fn finish(&self, digest: &Digest) {
        if let Some(b) = self.bars.lock().expect("lock").remove(digest) {
            b.finish_with_message("done");
        }
    }
    fn skipped(&self, digest: &Digest, size: u64) {
        let _ = self
            .multi
            .println(format!("{} already cached ({size} bytes)", short(digest)));
    }
}
