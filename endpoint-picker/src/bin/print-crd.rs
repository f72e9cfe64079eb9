//! Prints kvpick's `InferencePool` CRD (YAML) for clusters without the Gateway API Inference
//! Extension's CRDs: `print-crd | kubectl apply -f -`. `manifests/crds/inferencepool.yaml` is
//! this output, and a test keeps the two equal.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    print!("{}", kvpick_epp::discovery::kubernetes::crd::crd_yaml()?);
    Ok(())
}
