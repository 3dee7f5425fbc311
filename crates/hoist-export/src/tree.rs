//! What the writers share about the merged tree's entries.

use hoist_unpack::EntryType;

/// The `S_IFMT` bits of an entry type, as inodes and cpio headers hold them.
pub fn type_bits(k: EntryType) -> u32 {
    match k {
        EntryType::File => 0o100000,
        EntryType::Dir => 0o040000,
        EntryType::Symlink => 0o120000,
        EntryType::Char => 0o020000,
        EntryType::Block => 0o060000,
        EntryType::Fifo => 0o010000,
    }
}
