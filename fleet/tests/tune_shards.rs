//! `kvpick-sim tune` sharded over processes, as `manifests/examples/tune` runs it on a cluster:
//! the Indexed Job's own arguments (trace path, search size and seeds cut down to fit a test),
//! one `kvpick-sim` process per shard, then the merge Job's arguments. The merged ranking,
//! `tune.json`, `picker.yaml` and `configmap.yaml` equal, byte for byte, what one process
//! searching the same space writes; a missing shard or one of another search is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kvpick_sim(args: &[String]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kvpick-sim {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A manifest's YAML document with `kind`.
fn manifest(path: &str, kind: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{path} has no {kind}"))
}

/// The first container's `args` of a Job.
fn job_args(job: &Value) -> Vec<String> {
    job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// `args` with the value of `--flag=…` replaced (the flag must be there).
fn set(args: &mut [String], flag: &str, value: &str) {
    let prefix = format!("{flag}=");
    let i = (args.iter().position(|a| a.starts_with(&prefix)))
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[i] = format!("{prefix}{value}");
}

#[test]
fn shards_as_separate_processes_merge_into_the_single_process_ranking() {
    let dir = tempfile::tempdir().unwrap();
    let (results, single) = (dir.path().join("results"), dir.path().join("single"));
    let job = manifest("manifests/examples/tune/shards-job.yaml", "Job");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let shards = job["spec"]["completions"].as_u64().unwrap();
    assert_eq!(job["spec"]["parallelism"].as_u64(), Some(shards));
    let mut args = job_args(&job);
    assert_eq!(args[0], "tune");
    // The pod's index comes from the Job; N is the Job's completions.
    assert!(
        args.contains(&format!("--shard=$(SHARD_INDEX)/{shards}")),
        "{args:?}"
    );
    // Cut down to a test's size: the trace's first 100 requests on 4 engines, a 2-level grid
    // (7 points and the current config: one candidate per shard), 2 seeds, 1 job per process.
    let trace = repo().join("traces/conversation_trace.jsonl");
    set(&mut args, "--trace", trace.to_str().unwrap());
    set(&mut args, "--engines", "4");
    set(&mut args, "--levels", "2");
    set(&mut args, "--seeds", "2");
    set(&mut args, "--jobs", "1");
    set(&mut args, "--out", results.to_str().unwrap());
    args.extend(["--limit=100".into(), "--time-scale=0.25".into()]);

    // Every shard its own process, two at a time (a 2-core machine).
    let shard_args = |i: u64| {
        let mut a = args.clone();
        set(&mut a, "--shard", &format!("{i}/{shards}"));
        a
    };
    for pair in (0..shards).collect::<Vec<_>>().chunks(2) {
        let children: Vec<_> = pair
            .iter()
            .map(|&i| {
                Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
                    .args(shard_args(i))
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let files: Vec<String> = (0..shards)
        .map(|i| format!("shard-{i}-of-{shards}.json"))
        .collect();
    for f in &files {
        assert!(results.join(f).is_file(), "{f} written");
    }

    // The merge Job's arguments, on the results folder.
    let merge_job = manifest("manifests/examples/tune/merge/merge-job.yaml", "Job");
    let mut merge_args = job_args(&merge_job);
    assert_eq!(merge_args[..3], ["tune", "merge", "/results"]);
    merge_args[2] = results.display().to_string();
    let tuned = results.join("tuned");
    set(&mut merge_args, "--out", tuned.to_str().unwrap());
    let merged = kvpick_sim(&merge_args);

    // One process, same search.
    let mut one: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--shard="))
        .cloned()
        .collect();
    set(&mut one, "--out", single.to_str().unwrap());
    one.push("--configmap-name=kvpick-epp-config".into());
    let whole = kvpick_sim(&one);

    for f in ["tune.json", "picker.yaml", "configmap.yaml", "summary.md"] {
        let (a, b) = (
            std::fs::read_to_string(tuned.join(f)).unwrap(),
            std::fs::read_to_string(single.join(f)).unwrap(),
        );
        assert_eq!(a, b, "{f}: merged vs single process");
    }
    // The printed ranking too.
    assert_eq!(
        String::from_utf8_lossy(&merged.stdout),
        String::from_utf8_lossy(&whole.stdout)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(tuned.join("tune.json")).unwrap()).unwrap();
    assert_eq!(r["points"].as_array().unwrap().len(), 7);
    assert_eq!(r["seeds"].as_array().unwrap().len(), 2);
    println!("{}", String::from_utf8_lossy(&merged.stdout));

    // A missing shard is refused, and so is a shard of another search.
    let partial = dir.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for f in &files[1..] {
        std::fs::copy(results.join(f), partial.join(f)).unwrap();
    }
    let refused = |shard_dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_kvpick-sim"))
            .args(["tune", "merge"])
            .arg(shard_dir)
            .arg("--out")
            .arg(dir.path().join("refused"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let missing = refused(&partial);
    assert!(
        missing.contains(&format!("shard 0/{shards} missing")),
        "{missing}"
    );
    let mut other = shard_args(0);
    set(&mut other, "--seeds", "3");
    set(&mut other, "--out", partial.to_str().unwrap());
    kvpick_sim(&other);
    let mixed = refused(&partial);
    assert!(mixed.contains("another search"), "{mixed}");
}
