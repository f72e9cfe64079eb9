//! Reads one KV-event payload, in any layout vLLM has used, into an [`EventBatch`].
//!
//! Liberal where vLLM's versions differ, strict where the index depends on it:
//! - batch and each event may be an array (`array_like`) or a map (`"type"` tag key), mixed
//!   freely; map keys in any order; unknown keys and extra trailing array elements are skipped;
//!   fields added after vLLM's first release may be absent (they read as `None`);
//! - block hashes are ints (negative ones keep their 64-bit pattern) or bytes (folded by
//!   [`EngineHash::from_bytes`]); `medium` is read by [`Medium::from_wire`];
//! - wrong types, out-of-range integers (token ids must fit `u32`), missing required fields,
//!   unknown event tags, trailing bytes and the limits below are errors naming the event, the
//!   field and the byte offset. One bad event fails its batch: the subscriber treats that as a
//!   gap, exactly like a lost message.
//!
//! `BlockStored` events whose tokens do not line up with their hashes are kept (vLLM sends such
//! shapes on purpose); see [`BlockStored::token_blocks`].
//!
//! Memory: nothing is reserved before its length header is checked against the bytes left, and
//! the limits below bound what one payload can make the decoder allocate.

use super::extra_keys::{self, Budget};
use super::msgpack::{Fault, Head, Reader};
use super::schema::{self, Field, Kind};
use super::{BlockRemoved, BlockStored, EngineHash, EventBatch, KvEvent, Medium};
use crate::Error;

#[cfg(test)]
#[rustfmt::skip]
mod fixtures;

/// Events in one batch. vLLM publishes one batch per engine step; a step stores and evicts at
/// most a few thousand blocks' worth of events.
pub const MAX_EVENTS_PER_BATCH: usize = 1 << 16;
/// Block hashes in one event: a 16M-token prompt at block size 16.
pub const MAX_BLOCKS_PER_EVENT: usize = 1 << 20;
/// Token ids in one `BlockStored`.
pub const MAX_TOKENS_PER_EVENT: usize = 1 << 24;

/// Decodes one payload (the last frame of a PUB message or of a replay reply).
pub fn decode_batch(payload: &[u8]) -> Result<EventBatch, Error> {
    let mut d = Decoder {
        r: Reader::new(payload),
        extra: Budget::default(),
    };
    let batch = d.batch()?;
    if d.r.remaining() > 0 {
        return Err(Error::MalformedEvent(format!(
            "{} bytes after the batch, from byte {}",
            d.r.remaining(),
            d.r.pos()
        )));
    }
    Ok(batch)
}

/// Where a fault happened, for the error message.
#[derive(Copy, Clone)]
enum Place {
    Batch(&'static str),
    Event(usize, Option<Kind>, &'static str),
}

fn malformed(place: Place, what: impl std::fmt::Display) -> Error {
    Error::MalformedEvent(match place {
        Place::Batch(field) => format!("batch field {field}: {what}"),
        Place::Event(i, Some(kind), field) => format!("event {i} ({}) {field}: {what}", kind.tag()),
        Place::Event(i, None, field) => format!("event {i} {field}: {what}"),
    })
}

/// An event being filled in, field by field, in whatever order the wire has them.
enum Partial {
    Stored(BlockStored),
    Removed(BlockRemoved),
    Cleared,
}

struct Decoder<'a> {
    r: Reader<'a>,
    /// Extra-key values this batch may still create.
    extra: Budget,
}

impl<'a> Decoder<'a> {
    fn batch(&mut self) -> Result<EventBatch, Error> {
        let at = self.r.pos();
        let place = Place::Batch;
        let mut batch = EventBatch::default();
        match self.r.head().map_err(|f| malformed(place("(header)"), f))? {
            Head::Array(n) => {
                if n < 2 {
                    return Err(malformed(
                        place("(header)"),
                        format!("array of {n} elements, expected [ts, events, ...]"),
                    ));
                }
                batch.ts = self.r.float().map_err(|f| malformed(place("ts"), f))?;
                batch.events = self.events()?;
                if n >= 3 {
                    batch.data_parallel_rank = self.dp_rank()?;
                }
                for _ in 3..n {
                    self.r.skip().map_err(|f| malformed(place("(extra)"), f))?;
                }
            }
            Head::Map(n) => {
                let (mut ts, mut events) = (false, false);
                for _ in 0..n {
                    match self.key().map_err(|f| malformed(place("(key)"), f))? {
                        Some(schema::BATCH_TS) => {
                            batch.ts = self.r.float().map_err(|f| malformed(place("ts"), f))?;
                            ts = true;
                        }
                        Some(schema::BATCH_EVENTS) => {
                            batch.events = self.events()?;
                            events = true;
                        }
                        Some(schema::BATCH_DP_RANK) => batch.data_parallel_rank = self.dp_rank()?,
                        _ => self
                            .r
                            .skip()
                            .map_err(|f| malformed(place("(unknown)"), f))?,
                    }
                }
                for (seen, name) in [(ts, schema::BATCH_TS), (events, schema::BATCH_EVENTS)] {
                    if !seen {
                        return Err(malformed(place(name), "missing"));
                    }
                }
            }
            _ => {
                let fault = self.r.type_fault("an array or a map", at);
                return Err(malformed(place("(header)"), fault));
            }
        }
        Ok(batch)
    }

    fn dp_rank(&mut self) -> Result<Option<u32>, Error> {
        let place = Place::Batch(schema::BATCH_DP_RANK);
        self.opt(|d| d.r.int("a u32 rank"))
            .map_err(|f| malformed(place, f))
    }

    fn events(&mut self) -> Result<Vec<KvEvent>, Error> {
        let place = Place::Batch(schema::BATCH_EVENTS);
        let at = self.r.pos();
        let n = self.r.array_len().map_err(|f| malformed(place, f))?;
        limit(n, MAX_EVENTS_PER_BATCH, at).map_err(|f| malformed(place, f))?;
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            events.push(self.event(i)?);
        }
        Ok(events)
    }

    /// A map key: `None` (already skipped) when it is not a string.
    fn key(&mut self) -> Result<Option<&'a str>, Fault> {
        let start = self.r.clone();
        match self.r.head()? {
            Head::Str(s) => Ok(Some(s)),
            _ => {
                self.r = start;
                self.r.skip()?;
                Ok(None)
            }
        }
    }

    fn kind(&mut self, i: usize) -> Result<Kind, Error> {
        let tag = self
            .r
            .str()
            .map_err(|f| malformed(Place::Event(i, None, "type tag"), f))?;
        Kind::from_tag(tag)
            .ok_or_else(|| Error::UnsupportedEvent(format!("event {i}: unknown type tag {tag:?}")))
    }

    fn event(&mut self, i: usize) -> Result<KvEvent, Error> {
        let at = self.r.pos();
        let head = self.r.head();
        let head = head.map_err(|f| malformed(Place::Event(i, None, "(header)"), f))?;
        let mut seen = 0u16;
        let ev = match head {
            Head::Array(0) | Head::Map(0) => {
                return Err(malformed(
                    Place::Event(i, None, "(header)"),
                    "empty, no type tag",
                ));
            }
            Head::Array(n) => {
                let kind = self.kind(i)?;
                let mut ev = Partial::new(kind);
                let fields = kind.fields();
                for j in 0..n - 1 {
                    match fields.get(j) {
                        Some(&field) => self.field(&mut ev, field, i, &mut seen)?,
                        None => self.skip(i, kind, "(extra element)")?,
                    }
                }
                ev
            }
            Head::Map(n) => {
                let body = self.r.clone();
                // msgspec writes the tag first; any other order costs one extra scan.
                let (kind, pairs) = match self.key() {
                    Ok(Some(schema::TAG_KEY)) => (self.kind(i)?, n - 1),
                    _ => {
                        self.r = body.clone();
                        let kind = self.find_tag(i, n)?;
                        self.r = body;
                        (kind, n)
                    }
                };
                let mut ev = Partial::new(kind);
                for _ in 0..pairs {
                    let key = self.key();
                    let key =
                        key.map_err(|f| malformed(Place::Event(i, Some(kind), "(key)"), f))?;
                    match key.and_then(Field::from_name) {
                        Some(field) => self.field(&mut ev, field, i, &mut seen)?,
                        None => self.skip(i, kind, "(unknown key)")?,
                    }
                }
                ev
            }
            _ => {
                let fault = self.r.type_fault("an array or a map", at);
                return Err(malformed(Place::Event(i, None, "(header)"), fault));
            }
        };
        let kind = ev.kind();
        if let Some(missing) = kind.required().iter().find(|f| seen & f.bit() == 0) {
            return Err(malformed(
                Place::Event(i, Some(kind), missing.name()),
                "missing",
            ));
        }
        Ok(match ev {
            Partial::Stored(s) => KvEvent::BlockStored(s),
            Partial::Removed(r) => KvEvent::BlockRemoved(r),
            Partial::Cleared => KvEvent::AllBlocksCleared,
        })
    }

    /// Scans a map event whose first key is not the tag for its `"type"` entry.
    fn find_tag(&mut self, i: usize, pairs: usize) -> Result<Kind, Error> {
        let place = Place::Event(i, None, "(scanning for the type tag)");
        for _ in 0..pairs {
            if self.key().map_err(|f| malformed(place, f))? == Some(schema::TAG_KEY) {
                return self.kind(i);
            }
            self.r.skip().map_err(|f| malformed(place, f))?;
        }
        Err(malformed(Place::Event(i, None, schema::TAG_KEY), "missing"))
    }

    fn skip(&mut self, i: usize, kind: Kind, what: &'static str) -> Result<(), Error> {
        self.r
            .skip()
            .map_err(|f| malformed(Place::Event(i, Some(kind), what), f))
    }

    /// Reads one field's value into the event; fields the event's class lacks are skipped.
    fn field(&mut self, ev: &mut Partial, f: Field, i: usize, seen: &mut u16) -> Result<(), Error> {
        let kind = ev.kind();
        let done = match ev {
            Partial::Stored(s) => match f {
                Field::BlockHashes => self.hashes().map(|v| s.block_hashes = v),
                Field::ParentBlockHash => self
                    .opt(|d| d.r.hash().map(EngineHash))
                    .map(|v| s.parent_block_hash = v),
                Field::TokenIds => self.tokens().map(|v| s.token_ids = v),
                Field::BlockSize => self.r.int("a u32 block size").map(|v| s.block_size = v),
                Field::LoraId => self.opt(|d| d.r.int("an i64")).map(|v| s.lora_id = v),
                Field::Medium => self.medium().map(|v| s.medium = v),
                Field::LoraName => self.string().map(|v| s.lora_name = v),
                Field::ExtraKeys => {
                    extra_keys::read(&mut self.r, &mut self.extra).map(|v| s.extra_keys = v)
                }
                Field::GroupIdx => self.opt(|d| d.r.int("a u32")).map(|v| s.group_idx = v),
                Field::KvCacheSpecKind => self.string().map(|v| s.kv_cache_spec_kind = v),
                Field::KvCacheSpecSlidingWindow => self
                    .opt(|d| d.r.int("a u32"))
                    .map(|v| s.kv_cache_spec_sliding_window = v),
            },
            Partial::Removed(r) => match f {
                Field::BlockHashes => self.hashes().map(|v| r.block_hashes = v),
                Field::Medium => self.medium().map(|v| r.medium = v),
                Field::GroupIdx => self.opt(|d| d.r.int("a u32")).map(|v| r.group_idx = v),
                _ => self.r.skip(),
            },
            Partial::Cleared => self.r.skip(),
        };
        done.map_err(|fault| malformed(Place::Event(i, Some(kind), f.name()), fault))?;
        *seen |= f.bit();
        Ok(())
    }

    /// `nil` as `None`, anything else through `read`.
    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Fault>,
    ) -> Result<Option<T>, Fault> {
        if self.r.nil() {
            Ok(None)
        } else {
            read(self).map(Some)
        }
    }

    fn string(&mut self) -> Result<Option<String>, Fault> {
        self.opt(|d| d.r.str().map(str::to_owned))
    }

    fn medium(&mut self) -> Result<Option<Medium>, Fault> {
        self.opt(|d| d.r.str().map(Medium::from_wire))
    }

    fn hashes(&mut self) -> Result<Vec<EngineHash>, Fault> {
        let at = self.r.pos();
        let n = self.r.array_len()?;
        limit(n, MAX_BLOCKS_PER_EVENT, at)?;
        let mut raw = Vec::new();
        self.r.hashes(n, &mut raw)?;
        Ok(raw.into_iter().map(EngineHash).collect())
    }

    fn tokens(&mut self) -> Result<Vec<u32>, Fault> {
        let at = self.r.pos();
        let n = self.r.array_len()?;
        limit(n, MAX_TOKENS_PER_EVENT, at)?;
        let mut out = Vec::new();
        self.r.u32s(n, &mut out)?;
        Ok(out)
    }
}

pub(super) fn limit(n: usize, limit: usize, at: usize) -> Result<(), Fault> {
    if n > limit {
        return Err(Fault::Limit {
            claimed: n,
            limit,
            at,
        });
    }
    Ok(())
}

impl Partial {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Stored => Partial::Stored(BlockStored::default()),
            Kind::Removed => Partial::Removed(BlockRemoved::default()),
            Kind::Cleared => Partial::Cleared,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Partial::Stored(_) => Kind::Stored,
            Partial::Removed(_) => Kind::Removed,
            Partial::Cleared => Kind::Cleared,
        }
    }
}
