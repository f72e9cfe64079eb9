//! A real `valkey-server` (Debian's, installed by `.ci/setup`) on a free loopback port, with its
//! data in a temporary directory; killed when dropped, and restartable on the same port.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

pub struct Valkey {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Valkey {
    /// Starts one and waits until it answers PING.
    pub async fn start() -> Self {
        let mut v = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        v.restart().await;
        v
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the store vanishes mid-run, connections reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) {
        self.kill();
        let log = self.dir.path().join("valkey.log");
        let child = Command::new("valkey-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start valkey-server ({e}): run .ci/setup, which installs it")
            });
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "valkey-server never answered on {}: {}",
            self.port,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok_and(|p| p == "PONG")
    }

    /// A connection for tests that write the store directly (hostile values, one of 4 MiB): it
    /// waits up to 10 s for an answer, not the client's default 500 ms, which a loaded machine
    /// exceeds.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let mut c = redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        c.set_response_timeout(Duration::from_secs(10));
        c
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        self.kill();
    }
}
