//! Progress on stderr: a bar per blob download, then one bar for the
//! layers being applied (bytes of each layer's blob read) and a spinner for
//! the disk image's final pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hoist::{Digest, Event, OpId, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    /// The apply bar, then the export spinner.
    stage: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            stage: Mutex::new(None),
        }
    }

    fn stage_bar(&self, make: impl FnOnce() -> ProgressBar) -> ProgressBar {
        let mut s = self.stage.lock().expect("lock");
        s.get_or_insert_with(|| self.multi.add(make())).clone()
    }

    fn end_stage(&self, msg: &'static str) {
        if let Some(b) = self.stage.lock().expect("lock").take() {
            b.finish_with_message(msg);
        }
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

fn byte_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

impl Progress for Bars {
    fn event(&self, _op: &OpId, e: &Event<'_>) {
        match *e {
            Event::BlobStart { digest, size } => {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(byte_style());
                bar.set_prefix(short(digest));
                self.bars.lock().expect("lock").insert(digest.clone(), bar);
            }
            Event::BlobProgress { digest, bytes } => {
                if let Some(b) = self.bars.lock().expect("lock").get(digest) {
                    b.set_position(bytes);
                }
            }
            Event::BlobDone { digest } => {
                if let Some(b) = self.bars.lock().expect("lock").remove(digest) {
                    b.finish_with_message("done");
                }
            }
            Event::BlobCached { digest, size } => {
                let _ = self
                    .multi
                    .println(format!("{} already cached ({size} bytes)", short(digest)));
            }
            Event::Applying {
                index,
                count,
                bytes,
                size,
            } => {
                let bar = self.stage_bar(|| {
                    let b = ProgressBar::new(size);
                    b.set_style(byte_style());
                    b
                });
                bar.set_prefix(format!("layer {}/{count}", index + 1));
                bar.set_length(size);
                bar.set_position(bytes);
            }
            Event::Exporting { format } => {
                self.end_stage("applied");
                let s = self.stage_bar(|| {
                    let s = ProgressBar::new_spinner();
                    s.enable_steady_tick(Duration::from_millis(120));
                    s
                });
                s.set_message(format!("writing the {format} image"));
            }
            Event::Done => self.end_stage("done"),
            Event::Failed { .. } => self.end_stage("failed"),
            _ => {}
        }
    }
}
