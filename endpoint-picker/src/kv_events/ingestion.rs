//! The seam with the rest of kvpick-epp: ingestion fed by the pool's views
//! ([`crate::Ingestion`]), reporting each endpoint's [`EventsState`] into its pool member's
//! [`crate::pool::Live`] cell, which the picker reads when it builds candidates.

use std::sync::Arc;

use kvpick_scheduler::EndpointId;
use kvpick_scheduler::EventsState;
use tokio_util::sync::CancellationToken;

use super::{
    DEFAULT_PUBLISHER_PORT, Hold, KvEvents, KvEventsConfig, KvSource, KvSourceView, Start,
    parse_tcp_address,
};
use crate::Ingestion;
use crate::error::Error;
use crate::pool::PoolView;

impl KvSourceView for PoolView {
    fn kv_sources(&self) -> Vec<KvSource> {
        self.members
            .iter()
            .map(|m| KvSource {
                endpoint: m.endpoint.id,
                address: m.endpoint.address,
                model: Arc::clone(&m.endpoint.model),
                kv_events: m.spec.kv_events.clone(),
                kv_replay: m.spec.kv_replay.clone(),
                rank: m.endpoint.rank,
            })
            .collect()
    }
}

/// Called with an endpoint's new state whenever it changes.
pub(crate) struct StateSink(Box<dyn Fn(EndpointId, EventsState) + Send + Sync>);

impl StateSink {
    pub fn call(&self, endpoint: EndpointId, state: EventsState) {
        (self.0)(endpoint, state);
    }
}

impl std::fmt::Debug for StateSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSink")
    }
}

impl KvEvents {
    /// Runs ingestion for the picker: endpoints from `ingestion.views`, blocks into
    /// `ingestion.index`, bind mode at `ingestion.bind` (`--kv-events-bind`) if set, and each
    /// endpoint's state into its member's `Live` cell as it changes. With a `hold`, no endpoint
    /// is opened before its [`super::Release`] (an index bootstrap leaves its anchors first).
    pub async fn start_for(
        ingestion: Ingestion,
        mut config: KvEventsConfig,
        shutdown: CancellationToken,
        hold: Option<Hold>,
    ) -> Result<Self, Error> {
        if let Some(bind) = &ingestion.bind {
            config.bind = Some(parse_tcp_address(bind, Some(DEFAULT_PUBLISHER_PORT))?);
        }
        let views = ingestion.views.clone();
        let sink = StateSink(Box::new(move |id, state| {
            if let Some(member) = views.borrow().by_id(id) {
                member.live.set_events(state);
            }
        }));
        let start = Start {
            anchors: ingestion.anchors,
            sink: Some(sink),
            hold,
        };
        Self::start_with(config, ingestion.index, ingestion.views, shutdown, start).await
    }
}
