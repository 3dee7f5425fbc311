//! What the writers share about the merged tree: the order they visit it
//! in, and the bits of its entry types.

use hoist_unpack::{Body, EntryType, MergedTree, NodeId, ROOT};

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

/// One walk of a finished merged tree, shared by the three writers.
/// Tables are indexed by node id (ids are dense): no hashing per node.
pub struct Walk<'t> {
    /// Every node once (hardlinks resolved to their first name): the root,
    /// then each directory's children in name order, directories taken
    /// depth-first in name order. Parents come before their children.
    pub order: Vec<NodeId>,
    /// Each directory's parent; the root is its own.
    pub parent: Vec<NodeId>,
    /// Every name: (directory, name, node), in the order met.
    pub edges: Vec<(NodeId, &'t [u8], NodeId)>,
    /// The first name each node was met by: paths are made only when a
    /// message needs one.
    up: Vec<Option<(NodeId, &'t [u8])>>,
}

impl<'t> Walk<'t> {
    pub fn new<H>(tree: &'t MergedTree<H>) -> Walk<'t> {
        let bound = tree.id_bound();
        let mut order = vec![ROOT];
        let mut seen = vec![false; bound];
        seen[ROOT as usize] = true;
        let mut parent = vec![ROOT; bound];
        let mut up = vec![None; bound];
        let mut edges = Vec::with_capacity(bound);
        let is_dir = |id: NodeId| matches!(tree.node(id).body, Body::Dir(_));
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            // Only directories are stacked.
            let Some(children) = tree.children(dir) else {
                continue;
            };
            for (name, &id) in children {
                edges.push((dir, &name[..], id));
                if !seen[id as usize] {
                    seen[id as usize] = true;
                    order.push(id);
                    up[id as usize] = Some((dir, &name[..]));
                }
                if is_dir(id) {
                    parent[id as usize] = dir;
                }
            }
            stack.extend(children.values().rev().copied().filter(|&id| is_dir(id)));
        }
        Walk {
            order,
            parent,
            edges,
            up,
        }
    }

    /// The node's path from the root, for messages (`/` for the root).
    pub fn path(&self, id: NodeId) -> String {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = id;
        while let Some((p, name)) = self.up[at as usize] {
            parts.push(name);
            at = p;
        }
        let mut s = String::new();
        for p in parts.iter().rev() {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(p));
        }
        if s.is_empty() {
            s.push('/');
        }
        s
    }

    /// Every name's path relative to the root (no leading `/`), with its
    /// node: hardlinks once per name. In walk order.
    pub fn paths(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut rel: Vec<Option<Vec<u8>>> = vec![None; self.parent.len()];
        rel[ROOT as usize] = Some(Vec::new());
        let mut out = Vec::with_capacity(self.edges.len());
        for &(dir, name, id) in &self.edges {
            let mut p = rel[dir as usize].clone().unwrap_or_default();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            if self.parent[id as usize] == dir && rel[id as usize].is_none() {
                rel[id as usize] = Some(p.clone());
            }
            out.push((p, id));
        }
        out
    }
}
