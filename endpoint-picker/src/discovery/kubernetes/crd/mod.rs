//! The `InferencePool` custom resource (`inference.networking.k8s.io/v1`, Gateway API Inference
//! Extension v1.x), as kvpick reads it and as `kvpick-epp crd` prints it for clusters without the
//! upstream CRDs.
//!
//! Field names, types, required fields, defaults and validation follow the published v1 API;
//! `tests::schema_matches_the_published_api` pins them. Descriptions are kvpick's own.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const DNS_GROUP: &str = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const KIND: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
const NAMESPACE: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const CONTROLLER: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$";

/// A set of model-server pods, the ports they serve on, and the endpoint picker that routes
/// among them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    namespaced,
    status = "InferencePoolStatus",
    shortname = "infpool",
    derive = "PartialEq",
    doc = "InferencePool groups model-server pods behind one endpoint picker.",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// The pods of the pool: those in the pool's namespace whose labels match.
    pub selector: LabelSelector,
    /// The ports requests go to; each `podIP:port` is its own endpoint (a data-parallel rank).
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "atomic",
        "x-kubernetes-validations" = [{
            "message": "port number must be unique",
            "rule": "self.all(p1, self.exists_one(p2, p1.number==p2.number))"
        }]
    ))]
    pub target_ports: Vec<Port>,
    /// The protocol the target ports speak: `http` (HTTP/1.1, the default) or `kubernetes.io/h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "http"))]
    pub app_protocol: Option<AppProtocol>,
    /// The endpoint picker the gateway consults for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_picker_ref: Option<EndpointPickerRef>,
}

/// Pod labels that must all match (the Service-style selector of the v1 API).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Required `{key: value}` pairs, ANDed.
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
}

/// One port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub struct Port {
    /// The port number.
    #[schemars(extend("format" = "int32", "minimum" = 1, "maximum" = 65535))]
    pub number: i32,
}

/// The application protocol of a pool's target ports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AppProtocol {
    /// HTTP/1.1.
    #[serde(rename = "http")]
    Http,
    /// HTTP/2 over cleartext.
    #[serde(rename = "kubernetes.io/h2c")]
    H2c,
}

/// Where the endpoint picker runs, and what the gateway does when it does not answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "message": "port is required when kind is 'Service' or unspecified (defaults to 'Service')",
    "rule": "self.kind != 'Service' || has(self.port)"
}]))]
pub struct EndpointPickerRef {
    /// API group of the referent; "" (the core group) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 0, max = 253), pattern(DNS_GROUP))]
    #[schemars(extend("default" = ""))]
    pub group: Option<String>,
    /// Kind of the referent; `Service` by default (ExternalName Services are not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(KIND))]
    #[schemars(extend("default" = "Service"))]
    pub kind: Option<String>,
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Service port (not the target port); required when the referent is a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// What the gateway does when the picker does not answer; `FailClose` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "FailClose"))]
    pub failure_mode: Option<FailureMode>,
}

/// What the gateway does when the endpoint picker fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailureMode {
    /// Forward the request to an endpoint of the gateway's choosing.
    FailOpen,
    /// Drop the request.
    FailClose,
}

/// What the gateways that use the pool report about it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct InferencePoolStatus {
    /// One entry per parent (usually a Gateway), at most 32; empty when none uses the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub parents: Vec<ParentStatus>,
}

/// The pool's status as one parent sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// Conditions such as `Accepted` and `ResolvedRefs`, at most 8, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The parent this entry is about.
    pub parent_ref: ParentReference,
    /// The controller that wrote this entry (`domain/path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(CONTROLLER))]
    pub controller_name: Option<String>,
}

/// A parent of the pool, usually a Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ParentReference {
    /// API group of the parent; `gateway.networking.k8s.io` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 0, max = 253), pattern(DNS_GROUP))]
    #[schemars(extend("default" = "gateway.networking.k8s.io"))]
    pub group: Option<String>,
    /// Kind of the parent; `Gateway` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(KIND))]
    #[schemars(extend("default" = "Gateway"))]
    pub kind: Option<String>,
    /// Name of the parent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the parent; the pool's own by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(NAMESPACE))]
    pub namespace: Option<String>,
}

/// Status conditions (`metav1.Condition`) with the API machinery's validation, keyed by type.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let name = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";
    schemars::Schema::try_from(json!({
        "description": "Conditions such as Accepted and ResolvedRefs, at most 8, keyed by type.",
        "type": "array",
        "maxItems": 8,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "message": {"type": "string", "maxLength": 32768},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "reason": {"type": "string", "minLength": 1, "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "type": {"type": "string", "maxLength": 316, "pattern": name},
            },
        },
    }))
    .unwrap_or_default()
}

fn match_labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::Schema::try_from(json!({
        "description": "Required {key: value} pairs, ANDed.",
        "type": "object",
        "minProperties": 1,
        "maxProperties": 64,
        "additionalProperties": {
            "type": "string",
            "minLength": 0,
            "maxLength": 63,
            "pattern": LABEL_VALUE,
        },
    }))
    .unwrap_or_default()
}

impl InferencePoolSpec {
    /// The target port numbers in rank order, as `u16` (the API bounds them to 1..=65535).
    pub fn port_numbers(&self) -> Vec<u16> {
        self.target_ports
            .iter()
            .filter_map(|p| u16::try_from(p.number).ok().filter(|&n| n != 0))
            .collect()
    }
}

/// The CRD: kube's derived one, with optional fields omitted-when-unset rather than `nullable`
/// (the published schema has no `nullable`; an unset field is never sent as `null`).
pub fn definition() -> CustomResourceDefinition {
    let mut crd = InferencePool::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            strip_nullable(schema);
        }
    }
    crd
}

fn strip_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.as_mut().and_then(|i| match i {
            JSONSchemaPropsOrArray::Schema(s) => Some(&mut **s),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }))
        .chain(schema.additional_properties.as_mut().and_then(|a| match a {
            JSONSchemaPropsOrBool::Schema(s) => Some(&mut **s),
            JSONSchemaPropsOrBool::Bool(_) => None,
        }));
    for child in children {
        strip_nullable(child);
    }
}

/// The CRD as YAML, with a header saying where it comes from (`manifests/crds/inferencepool.yaml`).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string(&definition())?;
    Ok(format!(
        "# InferencePool (inference.networking.k8s.io/v1), generated by kvpick from its Rust type:\n\
         #   cargo run -p kvpick-epp --bin print-crd > manifests/crds/inferencepool.yaml\n\
         # Schema-compatible with the Gateway API Inference Extension's v1 CRD; for clusters without it.\n\
         {body}"
    ))
}

#[cfg(test)]
mod tests;
