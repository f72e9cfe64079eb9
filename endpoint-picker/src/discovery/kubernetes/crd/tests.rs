use super::*;
use serde_json::Value;

/// Every key of `want` is in `got` with an equal value (objects recursively; arrays and scalars
/// exactly), and objects under `properties` have exactly the wanted property names.
fn assert_subset(want: &Value, got: &Value, path: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            if path.ends_with(".properties") {
                let mut wk: Vec<_> = w.keys().collect();
                let mut gk: Vec<_> = g.keys().collect();
                wk.sort();
                gk.sort();
                assert_eq!(wk, gk, "property names at {path}");
            }
            for (k, wv) in w {
                let gv = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in {g:?}"));
                assert_subset(wv, gv, &format!("{path}.{k}"));
            }
        }
        // k8s-openapi keeps minimum/maximum as f64: compare numbers by value.
        (Value::Number(w), Value::Number(g)) => assert_eq!(w.as_f64(), g.as_f64(), "at {path}"),
        _ => assert_eq!(want, got, "at {path}"),
    }
}

fn int_port() -> Value {
    json!({"type": "object", "required": ["number"], "properties": {"number": {
        "type": "integer", "format": "int32", "minimum": 1, "maximum": 65535
    }}})
}

/// Field names, types, required fields, defaults and validation of the published v1 API
/// (Gateway API Inference Extension v1.6 `InferencePool`), written out by hand.
#[test]
fn schema_matches_the_published_api() {
    let crd = serde_json::to_value(definition()).unwrap();
    assert_subset(
        &json!({
            "metadata": {
                "name": "inferencepools.inference.networking.k8s.io",
                "annotations": {"api-approved.kubernetes.io":
                    "https://github.com/kubernetes-sigs/gateway-api-inference-extension/pull/1173"},
            },
            "spec": {
                "group": "inference.networking.k8s.io",
                "scope": "Namespaced",
                "names": {"kind": "InferencePool",
                    "plural": "inferencepools", "singular": "inferencepool", "shortNames": ["infpool"]},
            },
        }),
        &crd,
        "crd",
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["versions"].as_array().map(Vec::len), Some(1));
    assert_subset(
        &json!({"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}),
        version,
        "version",
    );
    let schema = &version["schema"]["openAPIV3Schema"];
    let spec = json!({
        "type": "object",
        "required": ["selector", "targetPorts"],
        "properties": {
            "appProtocol": {"type": "string", "default": "http", "enum": ["http", "kubernetes.io/h2c"]},
            "endpointPickerRef": {
                "type": "object",
                "required": ["name"],
                "x-kubernetes-validations": [{
                    "message": "port is required when kind is 'Service' or unspecified (defaults to 'Service')",
                    "rule": "self.kind != 'Service' || has(self.port)"}],
                "properties": {
                    "failureMode": {"type": "string", "default": "FailClose", "enum": ["FailOpen", "FailClose"]},
                    "group": {"type": "string", "default": "", "minLength": 0, "maxLength": 253},
                    "kind": {"type": "string", "default": "Service", "minLength": 1, "maxLength": 63,
                        "pattern": "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"},
                    "name": {"type": "string", "minLength": 1, "maxLength": 253},
                    "port": int_port(),
                },
            },
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "properties": {"matchLabels": {
                    "type": "object", "minProperties": 1, "maxProperties": 64,
                    "additionalProperties": {"type": "string", "minLength": 0, "maxLength": 63,
                        "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"},
                }},
            },
            "targetPorts": {
                "type": "array", "minItems": 1, "maxItems": 8,
                "x-kubernetes-list-type": "atomic",
                "x-kubernetes-validations": [{"message": "port number must be unique",
                    "rule": "self.all(p1, self.exists_one(p2, p1.number==p2.number))"}],
                "items": int_port(),
            },
        },
    });
    let status = json!({
        "type": "object",
        "properties": {"parents": {
            "type": "array", "maxItems": 32, "x-kubernetes-list-type": "atomic",
            "items": {
                "type": "object",
                "required": ["parentRef"],
                "properties": {
                    "conditions": {
                        "type": "array", "maxItems": 8,
                        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                        "items": {"type": "object", "required":
                            ["lastTransitionTime", "message", "reason", "status", "type"]},
                    },
                    "controllerName": {"type": "string", "minLength": 1, "maxLength": 253},
                    "parentRef": {
                        "type": "object", "required": ["name"],
                        "properties": {
                            "group": {"type": "string", "default": "gateway.networking.k8s.io"},
                            "kind": {"type": "string", "default": "Gateway"},
                            "name": {"type": "string", "minLength": 1, "maxLength": 253},
                            "namespace": {"type": "string", "minLength": 1, "maxLength": 63},
                        },
                    },
                },
            },
        }},
    });
    assert_subset(&spec, &schema["properties"]["spec"], "spec");
    assert_subset(&status, &schema["properties"]["status"], "status");
    assert_subset(&json!({"required": ["spec"]}), schema, "root");
    let text = schema.to_string();
    assert!(
        !text.contains("nullable"),
        "optional fields are omitted, never null"
    );
}

#[test]
fn published_examples_round_trip() {
    let pool: InferencePool = serde_saphyr::from_str(
        r#"
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: p, namespace: ns}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}, {number: 8001}]
  endpointPickerRef: {name: kvpick-epp, port: {number: 9002}, failureMode: FailOpen}
status:
  parents:
  - parentRef: {name: gw}
    conditions:
    - {type: Accepted, status: "True", reason: Accepted, message: "", lastTransitionTime: "2025-01-01T00:00:00Z"}
"#,
    )
    .unwrap();
    assert_eq!(pool.spec.port_numbers(), [8000, 8001]);
    let picker = pool.spec.endpoint_picker_ref.as_ref().unwrap();
    assert_eq!(picker.failure_mode, Some(FailureMode::FailOpen));
    assert_eq!(picker.kind, None);
    let back = serde_json::to_value(&pool.spec).unwrap();
    assert_eq!(back["endpointPickerRef"]["failureMode"], "FailOpen");
    assert!(back.get("appProtocol").is_none(), "unset stays unset");
    assert_eq!(
        pool.status.unwrap().parents[0].conditions[0].type_,
        "Accepted"
    );
}

#[test]
fn the_yaml_names_how_to_regenerate_it() {
    let yaml = crd_yaml().unwrap();
    assert!(yaml.starts_with("# InferencePool"));
    assert!(yaml.contains("kind: CustomResourceDefinition"));
}
