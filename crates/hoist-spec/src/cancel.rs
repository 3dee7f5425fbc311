//! A cancellation token shared by every layer of an operation, in the manner
//! of Go's `context.Context` (which go-containerregistry threads through
//! `remote.WithContext`). Cancelling a token cancels its children; a child
//! cancelled on its own leaves the parent running, which is how a failure on
//! one side of the pull/apply pipeline stops the other side only.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

struct Node {
    flag: AtomicBool,
    /// Wakes sleepers at once when the token is cancelled.
    lock: Mutex<()>,
    cv: Condvar,
    parent: Option<Cancel>,
}

/// Cheap to clone; every clone is the same token.
#[derive(Clone)]
pub struct Cancel(Arc<Node>);

/// The error an operation stops with when its token was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cancel({})", self.is_cancelled())
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel(Arc::new(Node {
            flag: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            parent: None,
        }))
    }

    /// A token cancelled when this one is, or on its own.
    pub fn child(&self) -> Cancel {
        Cancel(Arc::new(Node {
            flag: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            parent: Some(self.clone()),
        }))
    }

    pub fn cancel(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        let _g = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.0.cv.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        let mut n = Some(self);
        while let Some(c) = n {
            if c.0.flag.load(Ordering::SeqCst) {
                return true;
            }
            n = c.0.parent.as_ref();
        }
        false
    }

    /// `Err(Cancelled)` once cancelled: `?` in a loop.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sleep for `d`, or less if the token is cancelled meanwhile. A parent
    /// cancelled while a child sleeps is seen within 50 ms (the child's own
    /// condvar is not told), which keeps the tree free of back-links.
    pub fn sleep(&self, d: Duration) -> Result<(), Cancelled> {
        let end = Instant::now() + d;
        let mut g = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            let step = (end - now).min(Duration::from_millis(50));
            g = self
                .0
                .cv
                .wait_timeout(g, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_sees_its_parent_but_not_the_reverse() {
        let p = Cancel::new();
        let c = p.child();
        c.cancel();
        assert!(c.is_cancelled() && !p.is_cancelled());
        let c2 = p.child();
        p.cancel();
        assert!(c2.is_cancelled());
    }

    #[test]
    fn sleep_returns_early_when_cancelled() {
        let p = Cancel::new();
        let c = p.child();
        let t = std::thread::spawn({
            let p = p.clone();
            move || {
                std::thread::sleep(Duration::from_millis(100));
                p.cancel();
            }
        });
        let start = Instant::now();
        assert_eq!(c.sleep(Duration::from_secs(30)), Err(Cancelled));
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        assert_eq!(Cancel::new().sleep(Duration::from_millis(10)), Ok(()));
    }
}
