//! Picker replicas behind one gateway. kvpick runs active-active: the gateway spreads requests
//! over N replicas ([`ReplicaRouting`]), each with its own picker (its own in-flight
//! reservations, routing history and tie-break seed), its own scrape loop (out of phase with the
//! others') and its own flow-control queue; their KV index is one shared view or one per replica
//! ([`IndexView`]). Without sharing, a replica sees the others' requests only when a scrape
//! shows them, so N replicas can send N requests to the same "best" pod between two scrapes.
//! With sharing ([`ShareSetup`]) they exchange their in-flight totals as kvpick-epp does through
//! Valkey.
//!
//! One replica is the simulation as it was: same seeds, same draws, same results.

mod setup;
mod share;

pub use setup::{IndexView, ReplicaRouting, ReplicaSetup};
pub use share::ShareSetup;

use kvpick_scheduler::events::EventBatch;
use kvpick_scheduler::{EndpointPickerConfig, PodSignals};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::admission::Admission;
use crate::clock::SimTime;
use crate::error::SimError;
use crate::policy::{PolicySpec, PoolShape, Router};

/// One picker replica: its router and what it alone sees.
#[derive(Debug)]
pub struct Replica {
    /// Its picker.
    pub router: Router,
    /// The engines' signals as of its last scrape.
    pub signals: Vec<PodSignals>,
    /// Its flow-control queue, when the picker config turns flow control on.
    pub admission: Option<Admission>,
    /// A dispatch round of its queue is scheduled.
    pub dispatching: bool,
}

/// Every replica of a run, and which one routed each request.
#[derive(Debug)]
pub struct Replicas {
    replicas: Vec<Replica>,
    setup: ReplicaSetup,
    rng: SmallRng,
    next: usize,
    /// The replica that routed each request, by trace index.
    owner: Vec<u32>,
    /// Their shared in-flight store, when they share.
    store: Option<share::Store>,
}

impl Replicas {
    /// `setup.count` replicas running `spec` over a pool of `shape`, whose engines show
    /// `signals` at the start. Replica 0 is seeded with `seed` (so one replica runs as before),
    /// the others with seeds derived from it.
    pub fn new(
        spec: &PolicySpec,
        shape: &PoolShape,
        setup: &ReplicaSetup,
        signals: &[PodSignals],
        seed: u64,
    ) -> Result<Self, SimError> {
        setup.validate()?;
        let replicas = (0..setup.count)
            .map(|r| {
                let seed = match r {
                    0 => seed,
                    _ => crate::trace::tokens::content_id("replica-seed", &[seed, r as u64]),
                };
                let router = Router::new(spec, shape, seed)?;
                let admission = router.picker_config().map(Admission::new);
                Ok(Replica {
                    router,
                    signals: signals.to_vec(),
                    admission,
                    dispatching: false,
                })
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let store = (setup.share.as_ref())
            .map(|s| share::Store::new(s, &replicas))
            .transpose()?;
        Ok(Self {
            store,
            replicas,
            setup: setup.clone(),
            rng: SmallRng::seed_from_u64(seed ^ 0x005e_ed0f_4e91_1ca5),
            next: 0,
            owner: Vec::new(),
        })
    }

    /// How they are set up.
    pub fn setup(&self) -> &ReplicaSetup {
        &self.setup
    }

    /// Replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether there is none (never, once built).
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The gateway hands request `request` to a replica: which one.
    pub fn assign(&mut self, request: usize) -> usize {
        let n = self.replicas.len();
        let r = match self.setup.routing {
            // One replica draws nothing: the run stays what it was.
            _ if n == 1 => 0,
            ReplicaRouting::Random => self.rng.random_range(0..n),
            ReplicaRouting::RoundRobin => {
                let r = self.next % n;
                self.next = (r + 1) % n;
                r
            }
        };
        if self.owner.len() <= request {
            self.owner.resize(request + 1, 0);
        }
        self.owner[request] = r as u32;
        r
    }

    /// Replica `r`.
    pub fn get(&self, r: usize) -> &Replica {
        &self.replicas[r]
    }

    /// Replica `r`, to change.
    pub fn get_mut(&mut self, r: usize) -> &mut Replica {
        &mut self.replicas[r]
    }

    /// Every replica.
    pub fn iter(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.iter()
    }

    /// Replica `r`'s shared in-flight round at `now` (nothing without sharing).
    pub fn share(&mut self, r: usize, now: SimTime) {
        if let Some(store) = &mut self.store {
            store.round(r, &self.replicas, now);
        }
    }

    /// The replica that routed `request`.
    pub fn owner(&self, request: usize) -> usize {
        self.owner.get(request).map_or(0, |&r| r as usize)
    }

    /// Request `request` produced its first token: its replica releases its prefill.
    pub fn first_token(&self, request: usize, now: SimTime) {
        let r = self.owner(request);
        self.replicas[r].router.first_token(request, now);
    }

    /// Request `request` ended: its replica releases its reservation.
    pub fn release(&mut self, request: usize, now: SimTime) {
        let r = self.owner(request);
        self.replicas[r].router.release(request, now);
    }

    /// Whether the engines' KV events must be delivered.
    pub fn wants_events(&self) -> bool {
        self.replicas[0].router.wants_events()
    }

    /// Applies one batch of `engine`'s events to index view `view` ([`ReplicaSetup::index_views`]).
    pub fn apply_events(&mut self, view: usize, engine: usize, batch: &EventBatch) {
        match self.setup.index {
            IndexView::Shared => {
                for r in &mut self.replicas {
                    r.router.apply_events(engine, batch);
                }
            }
            IndexView::PerReplica { .. } => {
                if let Some(r) = self.replicas.get_mut(view) {
                    r.router.apply_events(engine, batch);
                }
            }
        }
    }

    /// Entries replica 0's index holds per engine.
    pub fn index_entries(&self) -> Option<Vec<usize>> {
        self.replicas[0].router.index_entries()
    }

    /// The picker config the replicas run (`None` for `random` and `round-robin`).
    pub fn picker_config(&self) -> Option<&EndpointPickerConfig> {
        self.replicas[0].router.picker_config()
    }

    /// Whether some replica holds requests in its flow-control queue.
    pub fn queued(&self) -> bool {
        (self.replicas.iter()).any(|r| r.admission.as_ref().is_some_and(|a| !a.is_empty()))
    }

    /// How many requests each replica routed.
    pub fn routed_per_replica(&self) -> Vec<u64> {
        let mut out = vec![0; self.replicas.len()];
        for &r in &self.owner {
            out[r as usize] += 1;
        }
        out
    }
}
