//! The client side of `kvpick-epp query`: calls a running picker and formats the answer.

use std::fmt::Write as _;

use super::pb;
use super::pb::index_client::IndexClient;
use crate::config::Query;
use crate::error::Error;

/// Runs `query` against the picker at `server` and returns the text to print.
pub async fn run(server: String, query: Query) -> Result<String, Error> {
    let mut client = IndexClient::connect(server).await?;
    let mut out = String::new();
    match query {
        Query::Score {
            model,
            tokens,
            text,
            cache_salt,
            candidates,
        } => {
            let prompt = match text {
                Some(t) => Some(pb::score_request::Prompt::Text(t)),
                None => Some(pb::score_request::Prompt::Tokens(pb::TokenIds {
                    ids: tokens,
                })),
            };
            let r = client
                .score(pb::ScoreRequest {
                    model,
                    prompt,
                    cache_salt,
                    candidates,
                })
                .await?
                .into_inner();
            let _ = writeln!(
                out,
                "{} full blocks of {} tokens; scorers: {}",
                r.total_blocks,
                r.block_size,
                r.scorers.join(", ")
            );
            let _ = writeln!(
                out,
                "{:<4} {:<22} {:>7} {:>9} {:>8}  per scorer",
                "rank", "endpoint", "blocks", "weighted", "score"
            );
            for e in r.endpoints {
                let per: Vec<String> = e.scorer_scores.iter().map(|s| format!("{s:.3}")).collect();
                let _ = writeln!(
                    out,
                    "{:<4} {:<22} {:>7} {:>9.1} {:>8.3}  {}",
                    e.rank,
                    e.address,
                    e.matched_blocks,
                    e.weighted_blocks,
                    e.score,
                    per.join(" ")
                );
            }
        }
        Query::Endpoints => {
            let r = client
                .list_endpoints(pb::ListEndpointsRequest {})
                .await?
                .into_inner();
            let _ = writeln!(
                out,
                "{:<4} {:<22} {:<16} {:<8} {:>7} {:>7} {:>6} {:>9} {:<7}",
                "id",
                "endpoint",
                "model",
                "metrics",
                "waiting",
                "running",
                "kv",
                "blocks",
                "events"
            );
            for e in r.endpoints {
                let (w, run, kv) = e
                    .signals
                    .as_ref()
                    .map_or((0, 0, 0.0), |s| (s.waiting, s.running, s.kv_usage));
                let _ = writeln!(
                    out,
                    "{:<4} {:<22} {:<16} {:<8} {:>7} {:>7} {:>6.2} {:>9} {:<7}",
                    e.id, e.address, e.model, e.freshness, w, run, kv, e.blocks_held, e.events
                );
            }
        }
    }
    Ok(out)
}
