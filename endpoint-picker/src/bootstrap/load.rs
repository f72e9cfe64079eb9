//! Reading a peer's `Dump` into the index: checks every message, keeps the work bounded, and
//! leaves nothing behind when it fails.

use std::net::SocketAddr;

use kvpick_scheduler::EndpointId;
use kvpick_scheduler::KvIndex;
use kvpick_scheduler::index::{DumpEntry, EndpointFacts, Placement, Tiers};
use kvpick_scheduler::keys::BlockKey;

use crate::error::Error;
use crate::kv_events::{Anchor, Anchors};
use crate::pool::PoolView;
use crate::query::pb;
use crate::query::pb::dump_item::Item;

/// What a bootstrap loaded.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Endpoints restored whole, each with its anchor.
    pub endpoints: usize,
    /// Entries restored.
    pub entries: u64,
    /// Endpoints in the dump this replica's pool does not have (skipped).
    pub unknown: usize,
}

/// The endpoint whose entries are arriving.
#[derive(Debug)]
enum Current {
    None,
    /// Not in our pool: its entries are counted and dropped.
    Skipped,
    Loading(EndpointId, Anchor),
}

/// One dump being read into an index: the messages of a peer's `Dump`, one at a time, then
/// [`Loader::conclude`].
#[derive(Debug)]
pub struct Loader<'a> {
    index: &'a KvIndex,
    view: &'a PoolView,
    anchors: &'a Anchors,
    header: bool,
    current: Current,
    /// Endpoints written to (cleared again if the load fails).
    touched: Vec<EndpointId>,
    /// Entries read, skipped ones included: bounded by the index's capacity.
    read: u64,
    loaded: Loaded,
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::Bootstrap(format!("malformed dump: {why}"))
}

impl<'a> Loader<'a> {
    /// A load into `index` of the endpoints `view` has, leaving their anchors in `anchors`.
    pub fn new(index: &'a KvIndex, view: &'a PoolView, anchors: &'a Anchors) -> Self {
        Self {
            index,
            view,
            anchors,
            header: false,
            current: Current::None,
            touched: Vec::new(),
            read: 0,
            loaded: Loaded::default(),
        }
    }

    /// Reads one message.
    pub fn item(&mut self, item: pb::DumpItem) -> Result<(), Error> {
        let item = item.item.ok_or_else(|| bad("an empty message"))?;
        match (item, self.header) {
            (Item::Header(h), false) => self.header(&h),
            (Item::Header(_), true) => Err(bad("a second header")),
            (_, false) => Err(bad("no header first")),
            (Item::Begin(b), true) => self.begin(b),
            (Item::Entries(e), true) => self.entries(e),
            (Item::End(e), true) => self.end(e),
        }
    }

    /// Ends the load: `read` says whether every message arrived and was accepted. Unless it
    /// did and the dump ended where it may, forgets all it restored (entries and start anchors).
    pub fn conclude(self, read: Result<(), Error>) -> Result<Loaded, Error> {
        let result = read.and_then(|()| self.finish());
        if result.is_err() {
            for &id in &self.touched {
                self.index.clear_endpoint(id);
            }
            self.anchors.clear_starts();
        }
        result
    }

    /// The dump ended: it must not end inside an endpoint.
    fn finish(&self) -> Result<Loaded, Error> {
        if !self.header {
            return Err(bad("no header"));
        }
        if !matches!(self.current, Current::None) {
            return Err(bad("it ends inside an endpoint"));
        }
        Ok(self.loaded)
    }

    fn header(&mut self, h: &pb::DumpHeader) -> Result<(), Error> {
        let config = self.index.config();
        if h.secret_fingerprint != config.secret.fingerprint() {
            return Err(Error::Bootstrap(
                "the peer's index secret differs: give every replica the same \
                 --index-secret-file"
                    .into(),
            ));
        }
        if h.block_size != config.block_size.get() {
            return Err(Error::Bootstrap(format!(
                "the peer's block size is {}, ours {}",
                h.block_size, config.block_size
            )));
        }
        self.header = true;
        Ok(())
    }

    fn begin(&mut self, b: pb::DumpBegin) -> Result<(), Error> {
        if !matches!(self.current, Current::None) {
            return Err(bad("an endpoint begins before the last one ended"));
        }
        let address: SocketAddr = b
            .address
            .parse()
            .map_err(|_| bad(format!("endpoint {:?} is not ip:port", b.address)))?;
        let member = self.view.by_address(&address);
        self.current = match member {
            None => {
                self.loaded.unknown += 1;
                Current::Skipped
            }
            Some(m) => {
                let id = m.endpoint.id;
                if self.touched.contains(&id) {
                    return Err(bad(format!("endpoint {address} twice")));
                }
                self.touched.push(id);
                // Whatever it held is replaced by the dump's.
                self.index.clear_endpoint(id);
                let anchor = Anchor {
                    seq: b.seq,
                    len: b.payload_len,
                    hash: b.payload_hash,
                };
                Current::Loading(id, anchor)
            }
        };
        Ok(())
    }

    fn entries(&mut self, e: pb::DumpEntries) -> Result<(), Error> {
        self.read += e.entries.len() as u64;
        if self.read > self.index.config().capacity as u64 {
            return Err(Error::Bootstrap(format!(
                "the dump holds more than the index's capacity of {} entries",
                self.index.config().capacity
            )));
        }
        let id = match self.current {
            Current::None => return Err(bad("entries outside an endpoint")),
            Current::Skipped => return Ok(()),
            Current::Loading(id, _) => id,
        };
        let entries = e
            .entries
            .iter()
            .map(|e| {
                Ok(DumpEntry {
                    engine: e.engine,
                    key: BlockKey::from_raw(e.key),
                    parent: e.parent.map(BlockKey::from_raw),
                    place: Placement::from_raw(e.place).ok_or_else(|| bad("a placement"))?,
                    tiers: Tiers::from_bits(u8::try_from(e.tiers).map_err(|_| bad("tiers"))?),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let report = self.index.restore(id, &entries)?;
        self.loaded.entries += report.entries;
        Ok(())
    }

    fn end(&mut self, e: pb::DumpEnd) -> Result<(), Error> {
        match std::mem::replace(&mut self.current, Current::None) {
            Current::None => Err(bad("an end outside an endpoint")),
            Current::Skipped => Ok(()),
            Current::Loading(id, anchor) => {
                let facts = EndpointFacts {
                    split: e.split,
                    non_prefix_groups: e.non_prefix_groups,
                    extras: e
                        .extras
                        .iter()
                        .map(|x| (BlockKey::from_raw(x.key), x.count))
                        .collect(),
                };
                self.index.restore_facts(id, &facts)?;
                self.anchors.set_start(id, anchor);
                self.loaded.endpoints += 1;
                Ok(())
            }
        }
    }
}
