//! The config's own sections (`index`, `saturation`, `flowControl`), from the document to the
//! scheduler's types, checked against each other.

use super::document::{Document, FeatureGate};
use super::invalid;
use crate::error::Error;
use crate::events::Medium;
use crate::filters::Staleness;
use crate::flow::FlowConfig;
use crate::index::IndexConfig;
use crate::keys::BlockSize;
use crate::saturation::SaturationConfig;

pub(super) fn index(doc: &Document) -> Result<IndexConfig, Error> {
    let mut config = IndexConfig::default();
    let Some(f) = &doc.index else {
        return Ok(config);
    };
    if let Some(n) = f.block_size {
        config.block_size = u32::try_from(n.0)
            .ok()
            .and_then(BlockSize::new)
            .ok_or_else(|| invalid("index.blockSize", format!("too large: {}", n.0)))?;
    }
    if let Some(n) = f.capacity {
        config.capacity = usize::try_from(n.0).unwrap_or(usize::MAX);
    }
    if let Some(t) = &f.tier_weights {
        for (medium, w) in [
            (Medium::Gpu, t.gpu),
            (Medium::Cpu, t.cpu),
            (Medium::Storage, t.storage),
        ] {
            if let Some(w) = w {
                config.tier_weights[medium.tier()] = w.0 as f32;
            }
        }
    }
    Ok(config)
}

/// `saturation` and `objectives`; the signal age is `staleness`'s.
pub(super) fn saturation(doc: &Document, staleness: &Staleness) -> SaturationConfig {
    let mut c = SaturationConfig {
        max_signal_age: staleness.max_signal_age,
        ..SaturationConfig::default()
    };
    if let Some(s) = &doc.saturation {
        if let Some(n) = s.queue_depth_threshold {
            c.queue_depth = u32::try_from(n.0).unwrap_or(u32::MAX);
        }
        if let Some(x) = s.kv_cache_util_threshold {
            c.kv_usage = x.0;
        }
    }
    for (name, p) in doc.objectives.iter().flatten() {
        c.objectives.insert(name.clone(), p.0);
    }
    c
}

/// `flowControl`, read only when `featureGates` lists `flowControl`: a section without its gate
/// is an error rather than silently ignored.
pub(super) fn flow_control(doc: &Document) -> Result<FlowConfig, Error> {
    let mut c = FlowConfig {
        enabled: doc
            .feature_gates
            .iter()
            .flatten()
            .any(|g| *g == FeatureGate::FlowControl),
        ..FlowConfig::default()
    };
    let Some(f) = &doc.flow_control else {
        return Ok(c);
    };
    if !c.enabled {
        return Err(invalid(
            "flowControl",
            "set, but the flowControl feature gate is off (add `featureGates: [flowControl]`)",
        ));
    }
    if let Some(n) = f.max_requests {
        c.max_requests = usize::try_from(n.0).unwrap_or(usize::MAX);
    }
    if let Some(n) = f.max_bytes {
        c.max_bytes = n.0;
    }
    if let Some(d) = f.queue_ttl {
        if d.0.is_zero() {
            return Err(invalid("flowControl.queueTTL", "must be greater than zero"));
        }
        c.ttl = d.0;
    }
    Ok(c)
}
