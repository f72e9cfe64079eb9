//! Endpoints (one vLLM serving port, i.e. one pod or one data-parallel rank of a pod) and the
//! signals scraped from them.
//!
//! Endpoints are named everywhere in the core by a dense small integer, [`EndpointId`], so that the
//! index can store holders in a few bits and candidate sets are bitsets. [`EndpointIds`] hands ids
//! out and reuses freed ones, lowest first, to keep them dense.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::keys::BlockSize;
use crate::time::Timestamp;

/// A dense id for an endpoint, valid while the endpoint is known. Reused after release.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(u32);

impl EndpointId {
    /// The largest number of endpoints one scheduler tracks at once.
    pub const MAX: usize = 1 << 16;

    /// `None` when `raw` is not below [`EndpointId::MAX`].
    pub const fn new(raw: u32) -> Option<Self> {
        if (raw as usize) < Self::MAX {
            Some(Self(raw))
        } else {
            None
        }
    }

    /// The id as an index into dense per-endpoint tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The raw id.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ep#{}", self.0)
    }
}

/// Allocates [`EndpointId`]s, lowest free first.
#[derive(Debug, Default, Clone)]
pub struct EndpointIds {
    used: EndpointSet,
}

impl EndpointIds {
    /// An allocator with every id free.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lowest free id, or `None` when [`EndpointId::MAX`] endpoints are live.
    pub fn allocate(&mut self) -> Option<EndpointId> {
        let id = self.used.first_absent()?;
        self.used.insert(id);
        Some(id)
    }

    /// Frees `id`; the caller must have removed the endpoint's index entries first.
    pub fn release(&mut self, id: EndpointId) {
        self.used.remove(id);
    }

    /// How many ids are live.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no id is live.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// A set of endpoints as a bitset over their dense ids.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EndpointSet {
    words: Vec<u64>,
}

impl EndpointSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns whether it was absent.
    pub fn insert(&mut self, id: EndpointId) -> bool {
        let (w, bit) = (id.index() / 64, 1u64 << (id.index() % 64));
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let absent = self.words[w] & bit == 0;
        self.words[w] |= bit;
        absent
    }

    /// Removes `id`; returns whether it was present.
    pub fn remove(&mut self, id: EndpointId) -> bool {
        let (w, bit) = (id.index() / 64, 1u64 << (id.index() % 64));
        match self.words.get_mut(w) {
            Some(word) if *word & bit != 0 => {
                *word &= !bit;
                true
            }
            _ => false,
        }
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: EndpointId) -> bool {
        self.words
            .get(id.index() / 64)
            .is_some_and(|w| w & (1u64 << (id.index() % 64)) != 0)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set has no member.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Removes every member.
    pub fn clear(&mut self) {
        self.words.clear();
    }

    /// Members in increasing id order.
    pub fn iter(&self) -> impl Iterator<Item = EndpointId> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some(EndpointId(w as u32 * 64 + bit))
            })
        })
    }

    /// The bitset's words, lowest ids first (for bulk set operations in the index).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn first_absent(&self) -> Option<EndpointId> {
        let id = self
            .words
            .iter()
            .position(|&w| w != u64::MAX)
            .map_or(self.words.len() * 64, |w| {
                w * 64 + self.words[w].trailing_ones() as usize
            });
        EndpointId::new(u32::try_from(id).ok()?)
    }
}

impl FromIterator<EndpointId> for EndpointSet {
    fn from_iter<I: IntoIterator<Item = EndpointId>>(iter: I) -> Self {
        let mut set = EndpointSet::new();
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Who an endpoint is: its address, what it serves and how it is labelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The dense id the index and scorers know it by.
    pub id: EndpointId,
    /// `ip:port` the gateway sends requests to.
    pub address: SocketAddr,
    /// The base model it serves.
    pub model: Arc<str>,
    /// Pod labels (e.g. `llm-d.ai/role`), for filters.
    pub labels: BTreeMap<String, String>,
    /// Data-parallel rank of this port within its pod (0 for a pod without data parallelism).
    pub rank: u32,
}

/// What an endpoint's `/metrics` said at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSignals {
    /// `vllm:num_requests_waiting`.
    pub waiting: u32,
    /// `vllm:num_requests_running`.
    pub running: u32,
    /// `vllm:kv_cache_usage_perc` (older `vllm:gpu_cache_usage_perc`), in [0, 1].
    pub kv_usage: f64,
    /// LoRA adapters from `vllm:lora_requests_info`.
    pub lora: LoraState,
    /// `block_size` label of `vllm:cache_config_info`.
    pub block_size: Option<BlockSize>,
    /// `num_gpu_blocks` label of `vllm:cache_config_info`.
    pub num_gpu_blocks: Option<u64>,
    /// When the scrape that produced this snapshot completed.
    pub scraped_at: Timestamp,
}

impl PodSignals {
    /// An idle endpoint's signals as of `at` (used before the first scrape in tests and simulations).
    pub fn idle(at: Timestamp) -> Self {
        Self {
            waiting: 0,
            running: 0,
            kv_usage: 0.0,
            lora: LoraState::default(),
            block_size: None,
            num_gpu_blocks: None,
            scraped_at: at,
        }
    }

    /// How old this snapshot is at `now`.
    pub fn age(&self, now: Timestamp) -> Duration {
        now - self.scraped_at
    }
}

/// LoRA adapter state from `vllm:lora_requests_info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoraState {
    /// `max_lora`: how many adapters can be resident at once.
    pub max_loras: u32,
    /// `running_lora_adapters`.
    pub running: Vec<String>,
    /// `waiting_lora_adapters`.
    pub waiting: Vec<String>,
}

impl LoraState {
    /// Whether `adapter` is loaded (running) or about to be (waiting).
    pub fn has(&self, adapter: &str) -> bool {
        self.running
            .iter()
            .chain(&self.waiting)
            .any(|a| a == adapter)
    }

    /// Whether another adapter could be loaded without evicting one.
    pub fn has_free_slot(&self) -> bool {
        let mut active: Vec<&str> = self
            .running
            .iter()
            .chain(&self.waiting)
            .map(String::as_str)
            .collect();
        active.sort_unstable();
        active.dedup();
        active.len() < self.max_loras as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> EndpointId {
        EndpointId::new(n).unwrap_or(EndpointId(0))
    }

    #[test]
    fn ids_are_dense_and_reused_lowest_first() {
        let mut ids = EndpointIds::new();
        let a: Vec<_> = (0..130).filter_map(|_| ids.allocate()).collect();
        assert_eq!(a.last(), Some(&id(129)));
        ids.release(id(3));
        ids.release(id(70));
        assert_eq!(ids.allocate(), Some(id(3)));
        assert_eq!(ids.allocate(), Some(id(70)));
        assert_eq!(ids.allocate(), Some(id(130)));
        assert_eq!(ids.len(), 131);
    }

    #[test]
    fn ids_run_out_at_max() {
        assert!(EndpointId::new(EndpointId::MAX as u32).is_none());
        let mut ids = EndpointIds::new();
        for _ in 0..EndpointId::MAX {
            assert!(ids.allocate().is_some());
        }
        assert_eq!(ids.allocate(), None);
    }

    #[test]
    fn set_operations() {
        let mut s: EndpointSet = [id(1), id(64), id(200)].into_iter().collect();
        assert!(s.contains(id(64)) && !s.contains(id(2)) && !s.contains(id(5000)));
        assert!(!s.insert(id(1)));
        assert!(s.remove(id(64)) && !s.remove(id(64)));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![id(1), id(200)]);
        assert_eq!(s.len(), 2);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn lora_slots() {
        let lora = LoraState {
            max_loras: 2,
            running: vec!["a".into()],
            waiting: vec!["a".into()],
        };
        assert!(lora.has("a") && !lora.has("b"));
        assert!(lora.has_free_slot());
    }
}
