//! The outcome of a run: one line per check.

use std::fmt;

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It held.
    Passed,
    /// It did not; why.
    Failed(String),
    /// It does not apply to this target (an optional feature the target does not claim).
    NotApplicable(&'static str),
}

/// Every check's outcome, in the order they ran.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// (check name, outcome).
    pub checks: Vec<(&'static str, Outcome)>,
}

impl Report {
    /// Records one check.
    pub fn record(&mut self, name: &'static str, outcome: Result<(), String>) {
        let outcome = match outcome {
            Ok(()) => Outcome::Passed,
            Err(why) => Outcome::Failed(why),
        };
        self.checks.push((name, outcome));
    }

    /// Records a check that does not apply.
    pub fn skip(&mut self, name: &'static str, why: &'static str) {
        self.checks.push((name, Outcome::NotApplicable(why)));
    }

    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed(_)))
    }

    /// The names of the checks that passed.
    pub fn passed_names(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|(_, o)| *o == Outcome::Passed)
            .map(|(n, _)| *n)
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, outcome) in &self.checks {
            match outcome {
                Outcome::Passed => writeln!(f, "PASS {name}")?,
                Outcome::Failed(why) => writeln!(f, "FAIL {name}: {why}")?,
                Outcome::NotApplicable(why) => writeln!(f, "N/A  {name}: {why}")?,
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .count();
        write!(f, "{} checks, {failed} failed", self.checks.len())
    }
}
