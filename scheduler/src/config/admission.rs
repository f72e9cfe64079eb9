//! The admission sections of the picker config: `saturation` and `objectives` (when the pool
//! counts as full, and request priorities), `featureGates` and `flowControl` (whether requests
//! wait in kvpick while it is full).

use serde_yaml::Value;

use super::fields::{Fields, invalid};
use crate::error::Error;
use crate::filters::Staleness;
use crate::flow::FlowConfig;
use crate::saturation::SaturationConfig;

/// Feature gates kvpick knows (llm-d's names).
const FEATURE_GATES: &[&str] = &["flowControl"];

/// `saturation` and `objectives`; the signal age is `staleness`'s.
pub(super) fn saturation(
    top: &Fields<'_>,
    staleness: &Staleness,
) -> Result<SaturationConfig, Error> {
    let mut c = SaturationConfig {
        max_signal_age: staleness.max_signal_age,
        ..SaturationConfig::default()
    };
    let f = Fields::new(
        top.value("saturation"),
        "saturation",
        &["queueDepthThreshold", "kvCacheUtilThreshold"],
        "saturation",
    )?;
    if let Some(n) = f.int("queueDepthThreshold", 0)? {
        c.queue_depth = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(x) = f.fraction("kvCacheUtilThreshold")? {
        c.kv_usage = x;
    }
    match top.value("objectives") {
        None => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let name = k
                    .as_str()
                    .ok_or_else(|| invalid("objectives", "names must be strings"))?;
                let at = format!("objectives.{name}");
                let p = v
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or_else(|| invalid(&at, "expected an integer priority"))?;
                c.objectives.insert(name.to_owned(), p);
            }
        }
        Some(_) => return Err(invalid("objectives", "expected a map of name to priority")),
    }
    Ok(c)
}

/// `flowControl`, read only when `featureGates` lists `flowControl`: a section without its gate
/// is an error rather than silently ignored.
pub(super) fn flow_control(top: &Fields<'_>) -> Result<FlowConfig, Error> {
    let mut c = FlowConfig::default();
    if let Some(gates) = top.list("featureGates")? {
        for (i, g) in gates.iter().enumerate() {
            let at = format!("featureGates[{i}]");
            let name = g
                .as_str()
                .ok_or_else(|| invalid(&at, "expected a string"))?;
            if !FEATURE_GATES.contains(&name) {
                return Err(invalid(
                    &at,
                    format!(
                        "unknown feature gate {name:?} (expected one of: {})",
                        FEATURE_GATES.join(", ")
                    ),
                ));
            }
            c.enabled |= name == "flowControl";
        }
    }
    let f = Fields::new(
        top.value("flowControl"),
        "flowControl",
        &["maxRequests", "maxBytes", "queueTTL"],
        "flowControl",
    )?;
    if top.value("flowControl").is_some() && !c.enabled {
        return Err(invalid(
            "flowControl",
            "set, but the flowControl feature gate is off (add `featureGates: [flowControl]`)",
        ));
    }
    if let Some(n) = f.int("maxRequests", 1)? {
        c.max_requests = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = f.int("maxBytes", 1)? {
        c.max_bytes = n;
    }
    if let Some(d) = f.duration("queueTTL")? {
        if d.is_zero() {
            return Err(invalid(&f.path("queueTTL"), "must be greater than zero"));
        }
        c.ttl = d;
    }
    Ok(c)
}
