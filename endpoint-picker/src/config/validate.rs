//! What clap cannot check: combinations, bounds, and the memory budget the flags add up to.

use super::Cli;
use crate::error::Error;

impl Cli {
    /// The memory budget the flags ask for.
    pub fn budget(&self) -> crate::budget::BudgetConfig {
        crate::budget::BudgetConfig {
            total: self.memory_budget,
            max_streams: self.max_streams,
            max_connections: self.max_connections.unwrap_or_else(|| {
                crate::budget::BudgetConfig::default_max_connections(self.memory_budget)
            }),
        }
    }

    /// Checks what clap cannot: combinations and bounds.
    pub fn validate(&self) -> Result<(), Error> {
        self.chart.check()?;
        crate::discovery::kubernetes::KubeSettings::from_cli(self)?;
        if self.block_size == 0 {
            return Err(Error::Config("--block-size must be positive".into()));
        }
        if self.refresh_metrics_interval.is_zero()
            || self.endpoints_poll_interval.is_zero()
            || self.cert_reload_interval.is_zero()
        {
            return Err(Error::Config("intervals must be positive".into()));
        }
        let budget = self.budget();
        if self.max_streams == 0
            || budget.max_connections == 0
            || budget.body_bytes() < self.max_body_bytes
        {
            return Err(Error::Config(format!(
                "--memory-budget {} leaves {} bytes for request bodies once --max-streams {} \
                 streams have their 64 KiB each and --max-connections {} connections their \
                 {} KiB, less than one --max-body-bytes body ({})",
                self.memory_budget,
                budget.body_bytes(),
                self.max_streams,
                budget.max_connections,
                crate::budget::CONNECTION_BYTES >> 10,
                self.max_body_bytes
            )));
        }
        Ok(())
    }

    /// The log format asked for: `json`, or `text` (`console` is zap's name for it).
    pub fn log_json(&self) -> bool {
        self.log_format == "json"
    }
}
