//! Plugin instances and scheduling profiles: names resolved to instances, each profile's filters,
//! weighted scorers and picker.

use std::collections::HashSet;

use super::document::{Document, PluginRefDoc, ProfileDoc};
use super::plugins::{PluginSpec, PluginType};
use super::{Named, Profile, WeightedScorer, default_picker, invalid};
use crate::error::Error;
use crate::index::IndexConfig;

pub(super) fn plugin_list(
    doc: &Document,
    index: &IndexConfig,
) -> Result<Vec<(String, PluginSpec)>, Error> {
    let items = doc
        .plugins
        .as_deref()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid("plugins", "required: at least one plugin"))?;
    let mut out: Vec<(String, PluginSpec)> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("plugins[{i}]");
        let spec = item.spec(&at, index)?;
        let name = match (&item.name, item.kind) {
            (Some(name), _) => name.clone(),
            (None, kind) => kind.map_or("", PluginType::name).to_owned(),
        };
        if name.is_empty() {
            return Err(invalid(&format!("{at}.name"), "must not be empty"));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(invalid(
                &format!("{at}.name"),
                format!("duplicate plugin name {name:?} (give each instance its own `name`)"),
            ));
        }
        out.push((name, spec));
    }
    Ok(out)
}
/// Builds a profile from `(path, plugin name, weight)` references.
fn resolve<'p>(
    name: String,
    refs: impl Iterator<Item = Result<(String, &'p str, Option<f64>), Error>>,
    plugins: &[(String, PluginSpec)],
) -> Result<Profile, Error> {
    let mut profile = Profile {
        name,
        filters: Vec::new(),
        scorers: Vec::new(),
        picker: default_picker(),
    };
    let (mut seen, mut picker_at) = (HashSet::new(), None::<String>);
    for r in refs {
        let (path, plugin, weight) = r?;
        let Some((_, spec)) = plugins.iter().find(|(n, _)| n == plugin) else {
            return Err(invalid(
                &format!("{path}.pluginRef"),
                format!("no plugin named {plugin:?}"),
            ));
        };
        if !seen.insert(plugin) {
            return Err(invalid(
                &format!("{path}.pluginRef"),
                format!("{plugin:?} is already in this profile"),
            ));
        }
        if weight.is_some() && !matches!(spec, PluginSpec::Scorer(_)) {
            return Err(invalid(
                &format!("{path}.weight"),
                format!(
                    "only scorers take a weight, and {plugin:?} is {}",
                    spec.role()
                ),
            ));
        }
        match spec {
            PluginSpec::Scorer(s) => profile.scorers.push(WeightedScorer {
                name: plugin.to_owned(),
                spec: s.clone(),
                weight: weight.unwrap_or(1.0),
            }),
            PluginSpec::Filter(f) => profile.filters.push(Named {
                name: plugin.to_owned(),
                spec: f.clone(),
            }),
            PluginSpec::Picker(p) => {
                if let Some(first) = &picker_at {
                    return Err(invalid(
                        &format!("{path}.pluginRef"),
                        format!("a profile has one picker, and {first} is already one"),
                    ));
                }
                picker_at = Some(format!("{plugin:?}"));
                profile.picker = Named {
                    name: plugin.to_owned(),
                    spec: p.clone(),
                };
            }
            PluginSpec::ProfileHandler(_)
            | PluginSpec::Decider(_)
            | PluginSpec::HeaderHandler
            | PluginSpec::DataLayer => {
                return Err(invalid(
                    &format!("{path}.pluginRef"),
                    format!("{plugin:?} is {}, not a plugin a profile runs", spec.role()),
                ));
            }
        }
    }
    Ok(profile)
}

pub(super) fn profile(
    doc: &ProfileDoc,
    at: &str,
    plugins: &[(String, PluginSpec)],
) -> Result<Profile, Error> {
    let name = doc
        .name
        .clone()
        .ok_or_else(|| invalid(&format!("{at}.name"), "required"))?;
    let items = doc
        .plugins
        .as_deref()
        .ok_or_else(|| invalid(&format!("{at}.plugins"), "required"))?;
    let refs = items
        .iter()
        .enumerate()
        .map(|(j, r): (usize, &PluginRefDoc)| {
            let path = format!("{at}.plugins[{j}]");
            let plugin = r
                .plugin_ref
                .as_deref()
                .ok_or_else(|| invalid(&format!("{path}.pluginRef"), "required"))?;
            Ok((path, plugin, r.weight.map(|w| w.0)))
        });
    resolve(name, refs, plugins)
}

/// Without `schedulingProfiles`: every plugin a profile runs, scorers at weight 1.
pub(super) fn implicit_profile(plugins: &[(String, PluginSpec)]) -> Result<Profile, Error> {
    let pickers = plugins
        .iter()
        .filter(|(_, spec)| matches!(spec, PluginSpec::Picker(_)))
        .count();
    if pickers > 1 {
        return Err(invalid(
            "schedulingProfiles",
            format!("required when plugins holds more than one picker ({pickers}): say which runs"),
        ));
    }
    let refs = plugins
        .iter()
        .filter(|(_, spec)| spec.runs_in_profiles())
        .map(|(name, _)| Ok(("schedulingProfiles".to_owned(), name.as_str(), None)));
    resolve("default".to_owned(), refs, plugins)
}
