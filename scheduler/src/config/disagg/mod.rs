//! Which scheduling profiles run: one, or llm-d's P/D pair under a P/D profile handler.
//!
//! With `disagg-profile-handler` (or `pd-profile-handler`) and a prefill decider,
//! `schedulingProfiles` holds the decode profile and the prefill profile, by the names the
//! handler gives (default `decode` and `prefill`); the decode profile is the config's
//! [`super::EndpointPickerConfig::profile`] and the rest is [`Disaggregation`]. Without a decider
//! the handler runs the decode profile alone. Any other shape is one profile, as before.

pub(super) mod doc;

use super::document::Document;
use super::plugins::PluginSpec;
use super::{Named, Profile, invalid, profiles};
use crate::disagg::Decider;
use crate::error::Error;

/// A configured profile handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerSpec {
    /// `single-profile-handler`: one profile.
    Single,
    /// `disagg-profile-handler`, `pd-profile-handler`.
    Disagg(DisaggHandler),
}

/// A P/D profile handler's parameters, resolved to names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisaggHandler {
    /// The decode profile's name.
    pub decode_profile: String,
    /// The prefill profile's name.
    pub prefill_profile: String,
    /// The prefill decider's plugin name; `None` runs the decode profile only.
    pub decider: Option<String>,
    /// `pd-profile-handler`'s `prefixPluginName`/`prefixPluginType`: must name a declared plugin.
    pub prefix_plugin: Option<String>,
}

/// The prefill side of a P/D config ([`crate::disagg`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Disaggregation {
    /// The handler's plugin name.
    pub handler: String,
    /// The decider, with its plugin name.
    pub decider: Named<Decider>,
    /// The prefill profile.
    pub prefill: Profile,
}

/// The active profile and, under a P/D handler with a decider, the prefill side.
pub(super) fn resolve(
    doc: &Document,
    plugins: &[(String, PluginSpec)],
) -> Result<(Profile, Option<Disaggregation>), Error> {
    let handlers: Vec<(usize, &str, &HandlerSpec)> = plugins
        .iter()
        .enumerate()
        .filter_map(|(i, (name, spec))| match spec {
            PluginSpec::ProfileHandler(h) => Some((i, name.as_str(), h)),
            _ => None,
        })
        .collect();
    if let [_, (i, second, _), ..] = handlers.as_slice() {
        return Err(invalid(
            &format!("plugins[{i}]"),
            format!(
                "a config has one profile handler, and {:?} is already one (then {second:?})",
                handlers[0].1
            ),
        ));
    }
    let Some(&(at, handler, HandlerSpec::Disagg(pd))) = handlers.first() else {
        return single(doc, plugins).map(|p| (p, None));
    };
    let at = format!("plugins[{at}].parameters");
    if let Some(prefix) = &pd.prefix_plugin
        && !plugins.iter().any(|(n, _)| n == prefix)
    {
        return Err(invalid(
            &format!("{at}.prefixPluginName"),
            format!("no plugin named {prefix:?}"),
        ));
    }
    let decider = match &pd.decider {
        None => None,
        Some(name) => match plugins.iter().find(|(n, _)| n == name) {
            Some((_, PluginSpec::Decider(d))) => Some(Named {
                name: name.clone(),
                spec: *d,
            }),
            Some((_, other)) => {
                return Err(invalid(
                    &format!("{at}.deciders.prefill"),
                    format!("{name:?} is {}, not a P/D decider", other.role()),
                ));
            }
            None => {
                return Err(invalid(
                    &format!("{at}.deciders.prefill"),
                    format!(
                        "no plugin named {name:?} (declare a prefix-based-pd-decider or an \
                         always-disagg-pd-decider)"
                    ),
                ));
            }
        },
    };
    let docs = doc.scheduling_profiles.as_deref().ok_or_else(|| {
        invalid(
            "schedulingProfiles",
            format!(
                "required with {handler:?}: the {:?} and {:?} profiles",
                pd.decode_profile, pd.prefill_profile
            ),
        )
    })?;
    let (mut decode, mut prefill) = (None, None);
    for (j, p) in docs.iter().enumerate() {
        let path = format!("schedulingProfiles[{j}]");
        let name = p.name.as_deref().unwrap_or_default();
        if name == pd.decode_profile {
            decode = Some(profiles::profile(p, &path, plugins)?);
        } else if name == pd.prefill_profile {
            prefill = Some(profiles::profile(p, &path, plugins)?);
        } else {
            return Err(invalid(
                &format!("{path}.name"),
                format!(
                    "{name:?} is neither the decode profile {:?} nor the prefill profile {:?} \
                     of {handler:?}",
                    pd.decode_profile, pd.prefill_profile
                ),
            ));
        }
    }
    let decode = decode.ok_or_else(|| {
        invalid(
            "schedulingProfiles",
            format!(
                "no profile named {:?} (the decode profile)",
                pd.decode_profile
            ),
        )
    })?;
    let Some(decider) = decider else {
        return Ok((decode, None));
    };
    let prefill = prefill.ok_or_else(|| {
        invalid(
            "schedulingProfiles",
            format!(
                "no profile named {:?} (the prefill profile {:?} runs)",
                pd.prefill_profile, decider.name
            ),
        )
    })?;
    Ok((
        decode,
        Some(Disaggregation {
            handler: handler.to_owned(),
            decider,
            prefill,
        }),
    ))
}

/// One profile: the implicit one, or the one entry of `schedulingProfiles`.
fn single(doc: &Document, plugins: &[(String, PluginSpec)]) -> Result<Profile, Error> {
    match doc.scheduling_profiles.as_deref() {
        None => profiles::implicit_profile(plugins),
        Some([one]) => profiles::profile(one, "schedulingProfiles[0]", plugins),
        Some(many) => Err(invalid(
            "schedulingProfiles",
            format!(
                "expected exactly one profile, got {} (several run only under a \
                 disagg-profile-handler or pd-profile-handler with a prefill decider)",
                many.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
