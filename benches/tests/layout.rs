//! The rules between the workspace's seven parts (README.md, "Layout"), checked on the manifests as
//! `cargo metadata` reports them: a crate that gains a forbidden dependency fails here. Also the one
//! module layout inside the crates' `src/`.
#![allow(clippy::expect_used)] // test support code outside #[test] fns

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The parts, by package name.
const CORE: &str = "kvpick-scheduler";
const TOKENIZE: &str = "kvpick-tokenize";
const EPP: &str = "kvpick-epp";
const SIM: &str = "kvpick-sim";
const FLEET: &str = "kvpick-fleet";
const BENCHES: &str = "kvpick-benches";
const CONFORMANCE: &str = "kvpick-conformance";

/// Crates that bring sockets or an async runtime: the core and the simulation stay without them.
const LIVE: &[&str] = &[
    "tokio",
    "hyper",
    "hyper-util",
    "zeromq",
    "tonic",
    "reqwest",
    "kube",
];

/// One dependency edge of a workspace package.
#[derive(Debug)]
struct Dep {
    name: String,
    /// `normal`, `dev` or `build`.
    kind: String,
}

/// Every workspace package and its declared dependencies.
fn workspace() -> BTreeMap<String, Vec<Dep>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("packages");
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"].as_array().expect("dependencies");
            let deps = deps
                .iter()
                .map(|d| Dep {
                    name: d["name"].as_str().expect("name").to_owned(),
                    kind: d["kind"].as_str().unwrap_or("normal").to_owned(),
                })
                .collect();
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

/// The dependencies of `package` of the given kinds, by name.
fn deps<'a>(
    ws: &'a BTreeMap<String, Vec<Dep>>,
    package: &str,
    kinds: &[&str],
) -> BTreeSet<&'a str> {
    ws.get(package)
        .unwrap_or_else(|| panic!("{package} is not in the workspace"))
        .iter()
        .filter(|d| kinds.contains(&d.kind.as_str()))
        .map(|d| d.name.as_str())
        .collect()
}

/// `package` and the workspace crates it builds on (normal dependencies, transitively).
fn closure<'a>(ws: &'a BTreeMap<String, Vec<Dep>>, package: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::from([package]);
    let mut todo = vec![package];
    while let Some(p) = todo.pop() {
        for d in deps(ws, p, &["normal", "build"]) {
            if ws.contains_key(d) && seen.insert(d) {
                todo.push(d);
            }
        }
    }
    seen
}

fn assert_none(what: &str, found: &BTreeSet<&str>, forbidden: &[&str]) {
    let bad: Vec<&&str> = forbidden.iter().filter(|f| found.contains(**f)).collect();
    assert!(
        bad.is_empty(),
        "{what} must not depend on {bad:?} (README.md, Layout)"
    );
}

const ALL: &[&str] = &["normal", "build", "dev"];
const BUILT: &[&str] = &["normal", "build"];

#[test]
fn the_workspace_is_the_seven_parts() {
    let ws = workspace();
    let names: BTreeSet<&str> = ws.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([CORE, TOKENIZE, EPP, SIM, FLEET, BENCHES, CONFORMANCE]),
        "a new crate needs its place and rules in README.md's Layout and in this test"
    );
}

#[test]
fn the_core_imports_none_of_the_others() {
    let ws = workspace();
    assert_none(
        CORE,
        &deps(&ws, CORE, ALL),
        &[TOKENIZE, EPP, SIM, FLEET, BENCHES, CONFORMANCE],
    );
    for p in closure(&ws, CORE) {
        assert_none(&format!("{CORE} (through {p})"), &deps(&ws, p, BUILT), LIVE);
    }
}

#[test]
fn tokenize_knows_no_sidecar_and_no_simulator() {
    let ws = workspace();
    assert_none(
        TOKENIZE,
        &deps(&ws, TOKENIZE, ALL),
        &[EPP, SIM, FLEET, BENCHES, CONFORMANCE],
    );
}

#[test]
fn the_endpoint_picker_imports_the_fleet_only_in_its_tests() {
    let ws = workspace();
    assert_none(
        EPP,
        &deps(&ws, EPP, BUILT),
        &[SIM, FLEET, BENCHES, CONFORMANCE],
    );
    assert_none(
        &format!("{EPP}'s tests"),
        &deps(&ws, EPP, &["dev"]),
        &[SIM, BENCHES],
    );
}

#[test]
fn the_simulation_is_pure_and_imports_neither_the_picker_nor_the_fleet() {
    let ws = workspace();
    assert_none(
        SIM,
        &deps(&ws, SIM, ALL),
        &[EPP, FLEET, BENCHES, CONFORMANCE],
    );
    for p in closure(&ws, SIM) {
        assert_none(&format!("{SIM} (through {p})"), &deps(&ws, p, BUILT), LIVE);
    }
}

#[test]
fn the_conformance_suite_is_black_box() {
    let ws = workspace();
    assert_none(
        CONFORMANCE,
        &deps(&ws, CONFORMANCE, ALL),
        &[CORE, TOKENIZE, EPP, SIM, FLEET, BENCHES],
    );
}

#[test]
fn the_fleet_talks_to_the_picker_only_over_sockets() {
    let ws = workspace();
    assert_none(FLEET, &deps(&ws, FLEET, ALL), &[EPP, BENCHES, CONFORMANCE]);
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src folders are readable") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_with_children_are_folders_with_mod_rs_and_unit_tests_sit_inside_them() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut bad = Vec::new();
    let mut files = Vec::new();
    for part in [
        "scheduler",
        "tokenize",
        "endpoint-picker",
        "simulator",
        "fleet",
        "benches",
        "conformance",
    ] {
        rust_files(&root.join(part).join("src"), &mut files);
    }
    assert!(files.len() > 100, "found only {} source files", files.len());
    for file in &files {
        // `name.rs` beside a folder `name/`: the other style (the workspace uses `name/mod.rs`).
        if file.with_extension("").is_dir() {
            bad.push(format!("{}: use its folder's mod.rs", file.display()));
        }
        // `#[path]` puts a module's file somewhere else than where its name says (unit tests go in
        // `mod tests { … }` at the module's end, or in its folder's `tests.rs`).
        let text = std::fs::read_to_string(file).expect("source files are readable");
        if text.lines().any(|l| l.trim_start().starts_with("#[path")) {
            bad.push(format!("{}: a #[path] module", file.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "module layout (README.md, Layout): {bad:#?}"
    );
}
