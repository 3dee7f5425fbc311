//! What every tar entry loop checks before each entry: that the operation
//! was not cancelled, and that the image stays within its entry budget
//! (shared by all its layers). Checked before the entry is applied, so a
//! hostile layer of millions of entries stops at the limit, not after.

use hoist_spec::Cancel;

use crate::UnpackError;

#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub cancel: Option<Cancel>,
    pub max_entries: Option<u64>,
    seen: u64,
}

impl Guard {
    pub fn new(cancel: Option<Cancel>, max_entries: Option<u64>) -> Guard {
        Guard {
            cancel,
            max_entries,
            seen: 0,
        }
    }

    /// Called once per tar entry.
    pub(crate) fn entry(&mut self) -> Result<(), UnpackError> {
        if self.cancel.as_ref().is_some_and(Cancel::is_cancelled) {
            return Err(UnpackError::Cancelled);
        }
        self.seen += 1;
        match self.max_entries {
            Some(limit) if self.seen > limit => Err(UnpackError::TooManyEntries { limit }),
            _ => Ok(()),
        }
    }
}
