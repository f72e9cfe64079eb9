//! llm-d's data-layer plugins, `metrics-data-source` and `core-metrics-extractor`, which the
//! endpoint picker charts' default config lists. kvpick has no data layer to configure: it
//! scrapes each vLLM pod's `/metrics` over HTTP and reads vLLM's series. So these entries are
//! accepted when they ask for exactly that, and refused, saying why, when they ask for more.

use serde::Deserialize;

use super::invalid;
use crate::error::Error;

/// `metrics-data-source` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MetricsSourceDoc {
    scheme: Option<String>,
    path: Option<String>,
    /// Only matters for https, which is refused.
    #[allow(dead_code)]
    insecure_skip_verify: Option<bool>,
}

/// `core-metrics-extractor` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ExtractorDoc {
    default_engine: Option<String>,
}

impl MetricsSourceDoc {
    /// Accepts `http` and `/metrics` (the defaults), what kvpick scrapes.
    pub(super) fn check(&self, path: &str) -> Result<(), Error> {
        if let Some(s) = self.scheme.as_deref().filter(|s| *s != "http") {
            return Err(invalid(
                &format!("{path}.scheme"),
                format!("{s:?}: kvpick scrapes the pods' metrics over http"),
            ));
        }
        if let Some(p) = self.path.as_deref().filter(|p| *p != "/metrics") {
            return Err(invalid(
                &format!("{path}.path"),
                format!("{p:?}: kvpick scrapes /metrics, where vLLM serves them"),
            ));
        }
        Ok(())
    }
}

impl ExtractorDoc {
    /// Accepts the vLLM engine only: kvpick reads vLLM's series.
    pub(super) fn check(&self, path: &str) -> Result<(), Error> {
        match self.default_engine.as_deref() {
            None | Some("vllm") => Ok(()),
            Some(e) => Err(invalid(
                &format!("{path}.defaultEngine"),
                format!("{e:?}: kvpick reads vLLM's metrics only"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::EndpointPickerConfig;

    fn parse(plugins: &str) -> Result<EndpointPickerConfig, String> {
        EndpointPickerConfig::parse(&format!(
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n{plugins}\
             - type: queue-scorer\nschedulingProfiles:\n- name: default\n  plugins:\n  \
             - pluginRef: queue-scorer\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn vllm_over_http_is_accepted_and_anything_else_refused() {
        parse(
            "- type: metrics-data-source\n  parameters:\n    scheme: \"http\"\n    path: \
             \"/metrics\"\n    insecureSkipVerify: true\n- type: core-metrics-extractor\n",
        )
        .unwrap();
        parse("- type: core-metrics-extractor\n  parameters:\n    defaultEngine: vllm\n").unwrap();
        let https = parse("- type: metrics-data-source\n  parameters:\n    scheme: https\n");
        assert!(https.unwrap_err().contains("plugins[0].parameters.scheme"));
        let sglang =
            parse("- type: core-metrics-extractor\n  parameters:\n    defaultEngine: sglang\n");
        assert!(sglang.unwrap_err().contains("vLLM's metrics only"));
        let unknown = parse("- type: metrics-data-source\n  parameters:\n    port: 1\n");
        assert!(unknown.unwrap_err().contains("port"));
    }

    #[test]
    fn a_profile_cannot_run_a_data_source() {
        let e = EndpointPickerConfig::parse(
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n\
             - type: metrics-data-source\nschedulingProfiles:\n- name: default\n  plugins:\n  \
             - pluginRef: metrics-data-source\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("data source"), "{e}");
    }
}
