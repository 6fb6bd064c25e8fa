//! The suite's report: stages, libtest counts, the closing `N passed, N failed` line; and the
//! runners of test executables that feed it (on the host here, in VMs through `vm`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{cargo, util};

/// libtest's counts, summed over `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests ignored.
    pub ignored: u64,
}

impl Counts {
    /// Adds the counts of a libtest summary line
    /// (`test result: ok. 3 passed; 0 failed; 1 ignored; ...`); other lines are ignored.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    /// Sum of two counts.
    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            passed: self.passed + o.passed,
            failed: self.failed + o.failed,
            ignored: self.ignored + o.ignored,
        }
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and everything passed.
    Passed,
    /// It ran and something failed (or it could not run), with why.
    Failed(String),
    /// It did not run, with why.
    Skipped(String),
}

/// One line of the final summary.
#[derive(Debug)]
pub struct Stage {
    /// Stage name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Test counts seen in its output.
    pub counts: Counts,
    /// Wall time.
    pub elapsed: Duration,
}

/// Collects stages and prints the summary.
#[derive(Debug, Default)]
pub struct Report {
    stages: Vec<Stage>,
}

impl Report {
    /// Runs `f` as a stage named `name`, recording its outcome and counts.
    pub fn stage(&mut self, name: &str, f: impl FnOnce(&mut Counts) -> Result<Outcome>) -> bool {
        println!("\n==== stage: {name}");
        let start = Instant::now();
        let mut counts = Counts::default();
        let outcome = match f(&mut counts) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        if let Outcome::Failed(why) = &outcome {
            eprintln!("==== stage {name} FAILED: {why}");
        }
        let ok = !matches!(outcome, Outcome::Failed(_));
        self.stages.push(Stage {
            name: name.into(),
            outcome,
            counts,
            elapsed: start.elapsed(),
        });
        ok
    }

    /// Records a stage that did not run.
    pub fn skip(&mut self, name: &str, why: &str) {
        println!("\n==== stage: {name}: skipped ({why})");
        self.stages.push(Stage {
            name: name.into(),
            outcome: Outcome::Skipped(why.into()),
            counts: Counts::default(),
            elapsed: Duration::ZERO,
        });
    }

    /// Totals: tests passed and failed; a failed stage with no failed test counts as one failure.
    pub fn totals(&self) -> (u64, u64) {
        let mut passed = 0;
        let mut failed = 0;
        for s in &self.stages {
            passed += s.counts.passed;
            failed += s.counts.failed;
            if matches!(s.outcome, Outcome::Failed(_)) && s.counts.failed == 0 {
                failed += 1;
            }
        }
        (passed, failed)
    }

    /// Whether no stage failed.
    pub fn success(&self) -> bool {
        !self
            .stages
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Failed(_)))
    }

    /// Prints one line per stage, then `N passed, N failed` as the closing line.
    pub fn print(&self) {
        println!("\n==== summary");
        for s in &self.stages {
            let (word, why) = match &s.outcome {
                Outcome::Passed => ("ok", String::new()),
                Outcome::Failed(w) => ("FAILED", format!(": {}", first_line(w))),
                Outcome::Skipped(w) => ("skipped", format!(": {w}")),
            };
            println!(
                "{:<28} {:<8} {:>4} passed, {:>3} failed, {:>3} ignored  {:>6.1}s{why}",
                s.name,
                word,
                s.counts.passed,
                s.counts.failed,
                s.counts.ignored,
                s.elapsed.as_secs_f64()
            );
        }
        let (passed, failed) = self.totals();
        println!("{passed} passed, {failed} failed");
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Runs `cmd` streaming its stdout, adding libtest counts; returns the outcome.
pub fn run_counted(cmd: &mut Command, counts: &mut Counts) -> Result<Outcome> {
    let mut seen = Counts::default();
    let status = util::run_streaming(cmd, |line| seen.add_line(line))?;
    *counts = counts.plus(seen);
    Ok(if status.success() {
        Outcome::Passed
    } else {
        Outcome::Failed(format!("`{}` exited with {status}", util::display(cmd)))
    })
}

/// Runs the integration test executables on the host.
pub fn run_host_integration(
    executables: &[PathBuf],
    agent: &Path,
    filter: &[String],
    counts: &mut Counts,
) -> Result<Outcome> {
    let mut failures = Vec::new();
    for exe in executables {
        let mut cmd = cargo::test_command(exe, agent, filter);
        if let Outcome::Failed(why) = run_counted(&mut cmd, counts)? {
            failures.push(why);
        }
    }
    Ok(if failures.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed(failures.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_lines() {
        let mut c = Counts::default();
        c.add_line("test result: ok. 12 passed; 0 failed; 2 ignored; 0 measured; 5 filtered out; finished in 0.01s");
        c.add_line(
            "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("test foo ... ok");
        c.add_line("running 4 tests");
        assert_eq!(
            c,
            Counts {
                passed: 13,
                failed: 3,
                ignored: 2
            }
        );
    }

    #[test]
    fn failed_stage_without_tests_counts_once() {
        let mut r = Report::default();
        r.stage("a", |c| {
            c.passed = 5;
            Ok(Outcome::Passed)
        });
        r.stage("b", |_| anyhow::bail!("compile error"));
        r.stage("c", |c| {
            c.passed = 1;
            c.failed = 2;
            Ok(Outcome::Failed("2 tests".into()))
        });
        r.skip("d", "not wanted");
        assert_eq!(r.totals(), (6, 3));
        assert!(!r.success());
    }
}
