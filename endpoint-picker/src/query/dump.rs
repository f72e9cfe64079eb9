//! `Dump`: the index, streamed for a starting replica to load (see [`crate::bootstrap`]).
//!
//! Generated as the client reads (no task, no buffer beyond one message): per endpoint whose
//! events are in sequence, its anchor is read first and its entries after, so the dump holds
//! at least what the anchor says and the loader's replay from it repairs the rest.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kvpick_scheduler::EndpointId;
use kvpick_scheduler::index::{DumpCursor, DumpEntry, EndpointFacts};
use tonic::Status;

use super::pb;
use crate::Shared;

/// Entries per message: about 40 bytes each on the wire, so a message stays near 160 KiB.
pub const ENTRIES_PER_MESSAGE: usize = 4096;
/// Extra references sent per endpoint at most (they are rare; fewer only end matches early).
pub const MAX_EXTRAS: usize = 4096;

/// The stream `Dump` answers with.
pub type DumpStream = Pin<Box<dyn Stream<Item = Result<pb::DumpItem, Status>> + Send>>;

enum Step {
    Header,
    /// The next endpoint to consider, by position in the view taken at the start.
    Next(usize),
    Entries(usize, EndpointId, DumpCursor),
    /// Every entry of the endpoint was sent: its facts next.
    End(usize, EndpointId),
}

/// The dump of `shared`'s index.
pub fn stream(shared: Arc<Shared>) -> DumpStream {
    let members: Vec<_> = shared
        .router
        .pool()
        .view()
        .members
        .iter()
        .map(|m| (m.endpoint.id, m.endpoint.address.to_string()))
        .collect();
    let s = futures::stream::unfold(Step::Header, move |step| {
        let item = next(&shared, &members, step);
        std::future::ready(item.map(|(item, step)| (Ok(pb::DumpItem { item: Some(item) }), step)))
    });
    Box::pin(s)
}

fn next(
    shared: &Shared,
    members: &[(EndpointId, String)],
    step: Step,
) -> Option<(pb::dump_item::Item, Step)> {
    use pb::dump_item::Item;
    let index = shared.router.scheduler().index();
    match step {
        Step::Header => Some((
            Item::Header(pb::DumpHeader {
                secret_fingerprint: index.config().secret.fingerprint(),
                block_size: index.block_size().get(),
            }),
            Step::Next(0),
        )),
        Step::Next(i) => {
            let (at, id, anchor) = members
                .iter()
                .enumerate()
                .skip(i)
                .find_map(|(at, (id, _))| Some((at, *id, shared.anchors.applied(*id)?)))?;
            Some((
                Item::Begin(pb::DumpBegin {
                    address: members[at].1.clone(),
                    seq: anchor.seq,
                    payload_len: anchor.len,
                    payload_hash: anchor.hash,
                }),
                Step::Entries(at, id, DumpCursor::default()),
            ))
        }
        Step::Entries(at, id, cursor) => {
            let chunk = index.dump_chunk(id, cursor, ENTRIES_PER_MESSAGE);
            let after = match chunk.next {
                Some(next) => Step::Entries(at, id, next),
                None => Step::End(at, id),
            };
            if chunk.entries.is_empty() {
                return next(shared, members, after);
            }
            let entries = chunk.entries.iter().map(entry).collect();
            Some((Item::Entries(pb::DumpEntries { entries }), after))
        }
        Step::End(at, id) => Some((end(index.dump_facts(id)), Step::Next(at + 1))),
    }
}

/// An entry as the dump sends it.
pub fn entry(e: &DumpEntry) -> pb::DumpEntry {
    pb::DumpEntry {
        engine: e.engine,
        key: e.key.get(),
        parent: e.parent.map(|p| p.get()),
        place: e.place.raw(),
        tiers: u32::from(e.tiers.bits()),
    }
}

/// An endpoint's facts as the message that ends its part of the dump.
pub fn end(facts: EndpointFacts) -> pb::dump_item::Item {
    pb::dump_item::Item::End(pb::DumpEnd {
        split: facts.split,
        non_prefix_groups: facts.non_prefix_groups,
        extras: facts
            .extras
            .iter()
            .take(MAX_EXTRAS)
            .map(|&(key, count)| pb::DumpExtra {
                key: key.get(),
                count,
            })
            .collect(),
    })
}
