//! Recency lists over one slab: the bounded-memory building block of the routing-history scorers
//! (and of the simulator's LRU caches).
//!
//! [`LruSlab`] holds nodes of any number of doubly linked recency lists ([`LruList`]) in one
//! `Vec`, linked by `u32` indices instead of pointers: no allocation per entry, no `unsafe`, and a
//! freed node is reused by the next insert, so the slab never grows past the largest number of
//! entries live at once. Callers keep their own key → node maps and decide when to evict
//! ([`LruSlab::back`]). Their maps hash with [`BuildKeyHasher`], keyed by a per-process secret.

/// Marks the absence of a node.
const NIL: u32 = u32::MAX;

/// One recency list: most recent at the front. The nodes live in an [`LruSlab`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LruList {
    head: u32,
    tail: u32,
    len: u32,
}

impl Default for LruList {
    fn default() -> Self {
        Self {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl LruList {
    /// Entries in the list.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Clone, Debug)]
struct Node<T> {
    prev: u32,
    next: u32,
    value: T,
}

/// Nodes of many recency lists, addressed by `u32` handles that stay valid until removed.
#[derive(Clone, Debug)]
pub struct LruSlab<T> {
    nodes: Vec<Node<T>>,
    /// Head of the chain of free nodes, linked through `next`.
    free: u32,
    live: usize,
}

impl<T> Default for LruSlab<T> {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            free: NIL,
            live: 0,
        }
    }
}

impl<T> LruSlab<T> {
    /// Live nodes over all lists.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no node is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The value of node `at`.
    pub fn get(&self, at: u32) -> &T {
        &self.nodes[at as usize].value
    }

    /// The value of node `at`, mutably.
    pub fn get_mut(&mut self, at: u32) -> &mut T {
        &mut self.nodes[at as usize].value
    }

    /// Adds `value` at the front (most recent) of `list`; returns its handle, or `None` when all
    /// `u32` handles are live (callers bound their capacity far below that).
    pub fn push_front(&mut self, list: &mut LruList, value: T) -> Option<u32> {
        let node = Node {
            prev: NIL,
            next: list.head,
            value,
        };
        let at = if self.free != NIL {
            let at = self.free;
            self.free = self.nodes[at as usize].next;
            self.nodes[at as usize] = node;
            at
        } else {
            let at = u32::try_from(self.nodes.len())
                .ok()
                .filter(|&at| at != NIL)?;
            self.nodes.push(node);
            at
        };
        if list.head != NIL {
            self.nodes[list.head as usize].prev = at;
        } else {
            list.tail = at;
        }
        list.head = at;
        list.len += 1;
        self.live += 1;
        Some(at)
    }

    /// Makes node `at` of `list` the most recent.
    pub fn touch(&mut self, list: &mut LruList, at: u32) {
        if list.head == at {
            return;
        }
        self.unlink(list, at);
        let node = &mut self.nodes[at as usize];
        node.prev = NIL;
        node.next = list.head;
        if list.head != NIL {
            self.nodes[list.head as usize].prev = at;
        } else {
            list.tail = at;
        }
        list.head = at;
    }

    /// The least recent node of `list`.
    pub fn back(&self, list: &LruList) -> Option<u32> {
        (list.tail != NIL).then_some(list.tail)
    }

    /// Takes node `at` out of `list` and frees it; its value stays readable until reused, so the
    /// caller can still use it to clean up its own maps.
    pub fn remove(&mut self, list: &mut LruList, at: u32) {
        self.unlink(list, at);
        list.len -= 1;
        self.live -= 1;
        self.nodes[at as usize].next = self.free;
        self.free = at;
    }

    fn unlink(&mut self, list: &mut LruList, at: u32) {
        let (prev, next) = {
            let node = &self.nodes[at as usize];
            (node.prev, node.next)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            list.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            list.tail = prev;
        }
    }

    /// Handles of `list`, most recent first.
    #[cfg(test)]
    pub(crate) fn iter(&self, list: &LruList) -> impl Iterator<Item = u32> + '_ {
        let mut at = list.head;
        std::iter::from_fn(move || {
            let here = at;
            (here != NIL).then(|| {
                at = self.nodes[here as usize].next;
                here
            })
        })
    }
}

/// Builds the hashers of maps keyed by block keys and session hashes: SipHash with random keys
/// drawn per process (std's `RandomState`). Those keys come from clients (block keys are an
/// unkeyed xxh3 chain over the prompt's tokens, which anyone can compute offline), so a
/// pass-through hasher would let a client choose keys that share their low bits and turn every
/// probe of the map into a walk over all of them; keyed, the bucket of a key cannot be planned.
pub(crate) type BuildKeyHasher = std::collections::hash_map::RandomState;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chosen_to_share_their_low_bits_still_spread() {
        // With a pass-through hasher these 4096 keys would all land in one bucket group.
        use std::hash::BuildHasher;
        let build = BuildKeyHasher::default();
        let buckets: std::collections::HashSet<u64> = (0..4096u64)
            .map(|i| build.hash_one(i << 40) & 1023)
            .collect();
        assert!(buckets.len() > 900, "{} of 1024 buckets", buckets.len());
    }

    fn values(slab: &LruSlab<u32>, list: &LruList) -> Vec<u32> {
        slab.iter(list).map(|at| *slab.get(at)).collect()
    }

    #[test]
    fn push_touch_and_evict_in_recency_order() {
        let mut slab = LruSlab::default();
        let mut list = LruList::default();
        let a = slab.push_front(&mut list, 1).unwrap();
        let _b = slab.push_front(&mut list, 2).unwrap();
        let c = slab.push_front(&mut list, 3).unwrap();
        assert_eq!(values(&slab, &list), [3, 2, 1]);
        slab.touch(&mut list, a);
        assert_eq!(values(&slab, &list), [1, 3, 2]);
        slab.touch(&mut list, a);
        assert_eq!(values(&slab, &list), [1, 3, 2]);
        let back = slab.back(&list).unwrap();
        assert_eq!(*slab.get(back), 2);
        slab.remove(&mut list, back);
        assert_eq!(values(&slab, &list), [1, 3]);
        slab.remove(&mut list, c);
        assert_eq!(values(&slab, &list), [1]);
        assert_eq!((list.len(), slab.len()), (1, 1));
        slab.remove(&mut list, a);
        assert_eq!(slab.back(&list), None);
        assert_eq!(list, LruList::default());
    }

    #[test]
    fn freed_nodes_are_reused_and_lists_stay_separate() {
        let mut slab = LruSlab::default();
        let (mut x, mut y) = (LruList::default(), LruList::default());
        for i in 0..4 {
            slab.push_front(&mut x, i);
            slab.push_front(&mut y, 10 + i);
        }
        while let Some(at) = slab.back(&x) {
            slab.remove(&mut x, at);
        }
        for i in 0..4 {
            slab.push_front(&mut x, 20 + i);
        }
        assert_eq!(slab.nodes.len(), 8, "freed nodes were reused, not appended");
        assert_eq!(values(&slab, &x), [23, 22, 21, 20]);
        assert_eq!(values(&slab, &y), [13, 12, 11, 10]);
        let second = slab.iter(&y).nth(1).unwrap();
        slab.touch(&mut y, second);
        assert_eq!(values(&slab, &y), [12, 13, 11, 10]);
        *slab.get_mut(second) = 99;
        assert_eq!(values(&slab, &y)[0], 99);
    }
}
