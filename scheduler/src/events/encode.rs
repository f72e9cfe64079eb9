//! Writes an [`EventBatch`] byte for byte as vLLM's publisher (msgspec) writes the same batch,
//! in any of vLLM's layouts. The simulated fleet publishes with this, so kvpick's subscriber
//! meets the bytes a real pod sends.
//!
//! msgspec's rules, mirrored here: fields in declaration order; the tag first (array element 0,
//! or the `"type"` key); ints in their smallest form (unsigned when non-negative), floats as
//! float64, the smallest str/bin/array/map header. `omit_defaults` drops the defaulted fields
//! that are `None` (`extra_keys`, `group_idx`, `kv_cache_spec_*`, `data_parallel_rank`) from
//! maps only: msgspec ignores it for `array_like` structs, which always carry every field.
//!
//! The encoder refuses what the decoder would refuse (the `MAX_*` limits), so whatever kvpick
//! emits, kvpick reads back.

use super::decode::{MAX_BLOCKS_PER_EVENT, MAX_EVENTS_PER_BATCH, MAX_TOKENS_PER_EVENT};
use super::extra_keys::{self, Budget};
use super::msgpack::write;
use super::schema::{self, Field, Kind};
use super::{BlockRemoved, BlockStored, EngineHash, EventBatch, KvEvent, Medium};
use crate::Error;

/// How a struct is laid out on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// msgspec `array_like=True`: fields by position.
    Array,
    /// msgspec's default: fields by name.
    Map,
}

/// How block hashes go on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum HashEncoding {
    /// Unsigned ints (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`).
    #[default]
    Int,
    /// 8 raw bytes, big-endian: read back through [`EngineHash::from_bytes`] as the same hash.
    Bytes,
}

/// The layout to write.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct EncodeOptions {
    /// The batch (`KVEventBatch`).
    pub batch: Encoding,
    /// Each event (`KVCacheEvent` subclasses).
    pub events: Encoding,
    /// Block hashes.
    pub hashes: HashEncoding,
}

impl EncodeOptions {
    /// vLLM before PR #42892: `array_like=True` on the batch and the events.
    pub const ARRAY: Self = Self::new(Encoding::Array, Encoding::Array);
    /// vLLM after PR #42892 (e.g. 0.26): array batch, map events. The default.
    pub const ARRAY_BATCH_MAP_EVENTS: Self = Self::new(Encoding::Array, Encoding::Map);
    /// Maps throughout (`kv_events.py` with `array_like` dropped from the batch as well).
    pub const MAP: Self = Self::new(Encoding::Map, Encoding::Map);
    /// Every layout the decoder reads (batch × events × hashes), for tests that must cover them.
    pub const ALL: [Self; 8] = [
        Self::ARRAY,
        Self::ARRAY.with_hashes(HashEncoding::Bytes),
        Self::ARRAY_BATCH_MAP_EVENTS,
        Self::ARRAY_BATCH_MAP_EVENTS.with_hashes(HashEncoding::Bytes),
        Self::new(Encoding::Map, Encoding::Array),
        Self::new(Encoding::Map, Encoding::Array).with_hashes(HashEncoding::Bytes),
        Self::MAP,
        Self::MAP.with_hashes(HashEncoding::Bytes),
    ];

    const fn new(batch: Encoding, events: Encoding) -> Self {
        Self {
            batch,
            events,
            hashes: HashEncoding::Int,
        }
    }

    /// The same layout with `hashes` for block hashes.
    pub const fn with_hashes(self, hashes: HashEncoding) -> Self {
        Self { hashes, ..self }
    }
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self::ARRAY_BATCH_MAP_EVENTS
    }
}

/// Encodes `batch` into a new buffer.
pub fn encode_batch(batch: &EventBatch, opts: EncodeOptions) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_batch_into(batch, opts, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `batch` to `out` (left as it was on error). Fails only on what the
/// decoder would refuse: more than the `MAX_*` limits allow, or extra keys nested too deep.
pub fn encode_batch_into(
    batch: &EventBatch,
    opts: EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let start = out.len();
    let mut e = Encoder {
        out,
        opts,
        extra: Budget::default(),
    };
    let done = e.batch(batch);
    if done.is_err() {
        e.out.truncate(start);
    }
    done
}

struct Encoder<'o> {
    out: &'o mut Vec<u8>,
    opts: EncodeOptions,
    extra: Budget,
}

/// Why an event cannot be encoded.
fn refuse(i: usize, kind: Kind, field: &str, what: impl std::fmt::Display) -> Error {
    Error::MalformedEvent(format!(
        "cannot encode event {i} ({}) {field}: {what}",
        kind.tag()
    ))
}

/// A length msgpack can carry that the decoder also accepts.
pub(super) fn len(n: usize, limit: usize) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(n32) if n <= limit => Ok(n32),
        _ => Err(format!("{n} elements exceed the limit of {limit}")),
    }
}

impl Encoder<'_> {
    fn batch(&mut self, batch: &EventBatch) -> Result<(), Error> {
        let events = len(batch.events.len(), MAX_EVENTS_PER_BATCH)
            .map_err(|what| Error::MalformedEvent(format!("cannot encode batch events: {what}")))?;
        let dp = batch.data_parallel_rank;
        // Token ids and hashes are nearly all of it: at most 5 and 9 bytes each.
        let bulk: usize = (batch.events.iter())
            .map(|e| match e {
                KvEvent::BlockStored(s) => 5 * s.token_ids.len() + 9 * s.block_hashes.len(),
                KvEvent::BlockRemoved(r) => 9 * r.block_hashes.len(),
                KvEvent::AllBlocksCleared => 0,
            })
            .sum();
        self.out.reserve(bulk + 64 * batch.events.len() + 32);
        match self.opts.batch {
            Encoding::Array => write::array(self.out, 3),
            Encoding::Map => {
                write::map(self.out, 2 + u32::from(dp.is_some()));
                write::str(self.out, schema::BATCH_TS);
            }
        }
        write::float(self.out, batch.ts);
        if self.opts.batch == Encoding::Map {
            write::str(self.out, schema::BATCH_EVENTS);
        }
        write::array(self.out, events);
        for (i, event) in batch.events.iter().enumerate() {
            self.event(i, event)?;
        }
        match (self.opts.batch, dp) {
            (Encoding::Array, None) => write::nil(self.out),
            (Encoding::Map, None) => {}
            (Encoding::Array, Some(rank)) => write::uint(self.out, rank.into()),
            (Encoding::Map, Some(rank)) => {
                write::str(self.out, schema::BATCH_DP_RANK);
                write::uint(self.out, rank.into());
            }
        }
        Ok(())
    }

    fn event(&mut self, i: usize, event: &KvEvent) -> Result<(), Error> {
        let kind = Kind::of(event);
        let fields = kind.fields();
        // Defaulted fields that are unset: omitted from maps (`omit_defaults`), nil in arrays.
        let unset = |f: Field| match (event, f) {
            (KvEvent::BlockStored(s), Field::ExtraKeys) => s.extra_keys.is_none(),
            (KvEvent::BlockStored(s), Field::GroupIdx) => s.group_idx.is_none(),
            (KvEvent::BlockStored(s), Field::KvCacheSpecKind) => s.kv_cache_spec_kind.is_none(),
            (KvEvent::BlockStored(s), Field::KvCacheSpecSlidingWindow) => {
                s.kv_cache_spec_sliding_window.is_none()
            }
            (KvEvent::BlockRemoved(r), Field::GroupIdx) => r.group_idx.is_none(),
            _ => false,
        };
        let by_name = self.opts.events == Encoding::Map;
        let written = || {
            let skip = move |j: usize, f: Field| by_name && j >= kind.first_defaulted() && unset(f);
            (fields.iter().enumerate()).filter_map(move |(j, &f)| (!skip(j, f)).then_some(f))
        };
        let n = 1 + written().count() as u32;
        if by_name {
            write::map(self.out, n);
            write::str(self.out, schema::TAG_KEY);
        } else {
            write::array(self.out, n);
        }
        write::str(self.out, kind.tag());
        for f in written() {
            if by_name {
                write::str(self.out, f.name());
            }
            let done = match event {
                KvEvent::BlockStored(s) => self.stored(s, f),
                KvEvent::BlockRemoved(r) => self.removed(r, f),
                KvEvent::AllBlocksCleared => Ok(()),
            };
            done.map_err(|what| refuse(i, kind, f.name(), what))?;
        }
        Ok(())
    }

    fn stored(&mut self, s: &BlockStored, f: Field) -> Result<(), String> {
        match f {
            Field::BlockHashes => self.hashes(&s.block_hashes)?,
            Field::ParentBlockHash => match s.parent_block_hash {
                Some(h) => self.hash(h),
                None => write::nil(self.out),
            },
            Field::TokenIds => {
                write::array(self.out, len(s.token_ids.len(), MAX_TOKENS_PER_EVENT)?);
                for &t in &s.token_ids {
                    write::uint(self.out, t.into());
                }
            }
            Field::BlockSize => write::uint(self.out, s.block_size.into()),
            Field::LoraId => self.opt(s.lora_id, write::int),
            Field::Medium => self.medium(s.medium),
            Field::LoraName => self.string(s.lora_name.as_deref())?,
            Field::ExtraKeys => {
                extra_keys::write(self.out, s.extra_keys.as_deref(), &mut self.extra)?
            }
            Field::GroupIdx => self.opt(s.group_idx, |out, v| write::uint(out, v.into())),
            Field::KvCacheSpecKind => self.string(s.kv_cache_spec_kind.as_deref())?,
            Field::KvCacheSpecSlidingWindow => self
                .opt(s.kv_cache_spec_sliding_window, |out, v| {
                    write::uint(out, v.into())
                }),
        }
        Ok(())
    }

    fn removed(&mut self, r: &BlockRemoved, f: Field) -> Result<(), String> {
        match f {
            Field::BlockHashes => self.hashes(&r.block_hashes)?,
            Field::Medium => self.medium(r.medium),
            _ => self.opt(r.group_idx, |out, v| write::uint(out, v.into())),
        }
        Ok(())
    }

    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
        match v {
            Some(v) => put(self.out, v),
            None => write::nil(self.out),
        }
    }

    fn hash(&mut self, h: EngineHash) {
        match self.opts.hashes {
            HashEncoding::Int => write::uint(self.out, h.0),
            HashEncoding::Bytes => write::bin(self.out, &h.0.to_be_bytes()),
        }
    }

    fn hashes(&mut self, hashes: &[EngineHash]) -> Result<(), String> {
        write::array(self.out, len(hashes.len(), MAX_BLOCKS_PER_EVENT)?);
        for &h in hashes {
            self.hash(h);
        }
        Ok(())
    }

    fn medium(&mut self, m: Option<Medium>) {
        self.opt(m, |out, m| write::str(out, m.as_str()));
    }

    fn string(&mut self, s: Option<&str>) -> Result<(), String> {
        if let Some(s) = s {
            len(s.len(), u32::MAX as usize)?;
        }
        self.opt(s, write::str);
        Ok(())
    }
}
