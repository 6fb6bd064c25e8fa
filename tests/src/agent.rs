//! The one fixture that runs `scaler agent` for the tests: a private configuration in a temp
//! dir (state file, status socket, metrics on a loopback port the kernel picks), the binary
//! started with `--log-json`, its log events collected, and typed queries over what the agent
//! exposes: log events ([`LogQuery`]), the audit trail ([`AuditRecord`]), `scaler status
//! --json` ([`Status`]) and `/metrics` ([`Scrape`]). The process is ended by pid and the temp
//! dir removed on drop.

use std::{
    fmt,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    enter_cgroup_on_exec,
    log::{JsonLog, LogEvent, LogQuery},
    metrics::Scrape,
    scaler_bin, tempdir, Proc,
};

/// Log messages the fixture and tests wait for (the agent's wording, in one place).
pub mod msg {
    /// Startup done: programs attached, cgroups reconciled, status socket bound.
    pub const RUNNING: &str = "agent running";
    /// A cgroup taken under management for one resource (`cgroup`, `resource`, `policy`,
    /// `limit`, `original`).
    pub const MANAGING: &str = "managing";
    /// A managed cgroup let go (`cgroup`, `resource`).
    pub const NO_LONGER_MANAGED: &str = "no longer managed (removed or deselected)";
    /// A limit set from outside the agent, adopted as the original (`cgroup`, `resource`,
    /// `original`).
    pub const ADOPTED: &str = "limit changed outside the agent: adopted as the original";
    /// Inotify (or the rescan) saw the cgroup tree change (debug; `changes`, `overflow`).
    pub const TREE_CHANGED: &str = "cgroup tree changed";
    /// An opt-in attribute that could have been forged, ignored (`cgroup`, `resource`,
    /// `xattr`, `reason`: `owner` or `writable`, `why`).
    pub const OPT_IN_IGNORED: &str =
        "opt-in ignored: an unprivileged user could have set the attribute";
    /// A cgroup a policy selects that holds the agent itself (`cgroup`, `resource`, `policy`).
    pub const REFUSED_OWN: &str = "refused: the agent runs in this cgroup (or below it) and \
                                   never manages its own limits; narrow the policy's match";
    /// SIGHUP applied a valid configuration (`policies`).
    pub const RELOADED: &str = "configuration reloaded";
    /// The last line: kernel counters (`submitted`, `dropped`).
    pub const EXITING: &str = "programs detached; exiting";
    /// The audit trail (target [`super::AUDIT_TARGET`]): a limit written (see
    /// [`super::AuditRecord`]).
    pub const LIMIT_CHANGED: &str = "limit changed";
    /// The audit trail: a write the kernel refused.
    pub const LIMIT_WRITE_FAILED: &str = "limit write failed";
    /// A raise a cgroup under pressure did not get (`cgroup`, `resource`, `reason`, `limit`,
    /// `wanted`, `allowed`, `room`, `suppressed`), at most once per 10 s per cgroup.
    pub const RAISE_REFUSED: &str = "raise refused";
    /// A Kubernetes pod sandbox (pause) container a policy selects, never managed (`cgroup`,
    /// `resource`, `policy`).
    pub const POD_SANDBOX: &str =
        "not managed: a Kubernetes pod sandbox (pause) container; its limits are never written";
    /// Pressure at the limit of an unmanaged ancestor of a managed cgroup (`cgroup`,
    /// `task_cgroup`, `resource`, `reason`, `kind`, `usage`, `limit`, `suppressed`).
    pub const UNMANAGED_ANCESTOR_BINDS: &str = "pressure at the limit of an unmanaged ancestor of \
         a managed cgroup: no limit the agent may change can help (manage the ancestor, or raise \
         its limit)";
}

/// The audit trail's target.
pub const AUDIT_TARGET: &str = "scaler::audit";

/// The log filter of the agent's tests: info, and the agent's own debug events (the cgroup
/// tree changes).
pub const AGENT_DEBUG_LOG: &str = "info,scaler::cmd::agent=debug";

/// How an audited limit write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    Written,
    DryRun,
    Failed,
}

/// One record of the audit trail (target `scaler::audit`): a limit change, or a write the
/// kernel refused.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    pub cgroup: String,
    pub cgroup_id: u64,
    /// `memory` or `cpu`.
    pub resource: String,
    pub old: u64,
    pub new: u64,
    /// `pressure`, `early_warning`, ...
    pub reason: String,
    pub outcome: AuditOutcome,
    /// Kernel event to write completion (not for failed writes).
    pub latency_us: Option<f64>,
    /// The errno of a failed write.
    pub errno: Option<i64>,
}

impl AuditRecord {
    /// The record an event carries, if it is one of the audit trail's.
    pub fn from_event(e: &LogEvent) -> Option<AuditRecord> {
        if e.target != AUDIT_TARGET {
            return None;
        }
        let outcome = match e.message.as_str() {
            msg::LIMIT_CHANGED if e.bool("dry_run") == Some(true) => AuditOutcome::DryRun,
            msg::LIMIT_CHANGED => AuditOutcome::Written,
            msg::LIMIT_WRITE_FAILED => AuditOutcome::Failed,
            _ => return None,
        };
        let bad = |f: &str| -> ! { panic!("audit record without a valid {f}: {e}") };
        Some(AuditRecord {
            cgroup: e.text("cgroup").unwrap_or_else(|| bad("cgroup")),
            cgroup_id: e.u64("cgroup_id").unwrap_or_else(|| bad("cgroup_id")),
            resource: e.text("resource").unwrap_or_else(|| bad("resource")),
            old: e.u64("old").unwrap_or_else(|| bad("old")),
            new: e.u64("new").unwrap_or_else(|| bad("new")),
            reason: e.text("reason").unwrap_or_else(|| bad("reason")),
            outcome,
            latency_us: e.f64("latency_us"),
            errno: e.i64("errno"),
        })
    }

    /// A written raise (new limit above the old).
    pub fn is_raise(&self) -> bool {
        self.outcome == AuditOutcome::Written && self.new > self.old
    }
}

impl fmt::Display for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} {} {} -> {} ({})",
            self.outcome, self.resource, self.cgroup, self.old, self.new, self.reason
        )?;
        if let Some(l) = self.latency_us {
            write!(f, " in {l} us")?;
        }
        if let Some(e) = self.errno {
            write!(f, " errno {e}")?;
        }
        Ok(())
    }
}

/// `scaler status --json`: the agent's status document (see the agent's `status.rs`).
#[derive(Clone, Debug)]
pub struct Status(pub Value);

impl Status {
    /// The `managed` entry of a memory cgroup.
    pub fn managed(&self, cgroup: &str) -> Option<&Value> {
        find_cgroup(&self.0["managed"], cgroup)
    }

    /// The `managed_cpu` entry of a cpu cgroup.
    pub fn managed_cpu(&self, cgroup: &str) -> Option<&Value> {
        find_cgroup(&self.0["managed_cpu"], cgroup)
    }

    /// `counters.actions`.
    pub fn actions(&self) -> u64 {
        self.0["counters"]["actions"]
            .as_u64()
            .expect("counters.actions")
    }

    /// `counters.failed_actions`.
    pub fn failed_actions(&self) -> u64 {
        self.0["counters"]["failed_actions"]
            .as_u64()
            .expect("counters.failed_actions")
    }

    /// `recent_actions`.
    pub fn recent_actions(&self) -> &[Value] {
        self.0["recent_actions"]
            .as_array()
            .map(Vec::as_slice)
            .expect("recent_actions")
    }
}

fn find_cgroup<'a>(list: &'a Value, cgroup: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|m| m["cgroup"] == cgroup)
}

impl std::ops::Deref for Status {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the agent is started with. The fixture owns the `[agent]` table's paths (state file,
/// status socket, metrics address); the test gives the rest.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The configuration after the `[agent]` table: `[node]`, `[[policy]]` tables.
    pub body: String,
    /// More `[agent]` keys, as TOML lines (`restore_on_exit = true`).
    pub agent_keys: Vec<String>,
    pub sample_interval: String,
    pub observe_all: bool,
    /// Serve `/metrics` (on 127.0.0.1, a port the kernel picks).
    pub metrics: bool,
    /// `SCALER_LOG`.
    pub log_filter: String,
    /// A cgroup directory the agent starts in.
    pub cgroup: Option<PathBuf>,
    /// Log messages not echoed on the test's output (per-cgroup lines of the load tests).
    pub quiet: Vec<&'static str>,
    /// Extra environment variables of the agent (`NOTIFY_SOCKET`, `SCALER_TEST_FAULT`).
    pub env: Vec<(String, String)>,
    /// The agent binary, when not [`scaler_bin`] (a comparison with an older build).
    pub binary: Option<PathBuf>,
    /// A whole configuration file (a shipped one) used instead of `body` and the fixture's
    /// `[agent]` keys: only the keys the fixture owns (`status_socket`, `state_file`,
    /// `metrics_addr`) are replaced, then `agent_keys` added (see [`AgentConfig::file`]).
    pub file: Option<String>,
}

impl AgentConfig {
    /// `body` after an `[agent]` table with metrics on, `observe_all = false`, a 200 ms
    /// sample interval and the info log level.
    pub fn new(body: impl Into<String>) -> AgentConfig {
        AgentConfig {
            body: body.into(),
            agent_keys: Vec::new(),
            sample_interval: "200ms".into(),
            observe_all: false,
            metrics: true,
            log_filter: "info".into(),
            cgroup: None,
            quiet: Vec::new(),
            env: Vec::new(),
            binary: None,
            file: None,
        }
    }

    /// Runs the agent on `text`, a whole configuration file with an `[agent]` table (a shipped
    /// one): its `status_socket`, `state_file` and `metrics_addr` are replaced by the
    /// fixture's (the test's own directory, a port the kernel picks; `metrics` as the file
    /// says), and [`agent_key`](Self::agent_key)s are added to its `[agent]` table. Nothing
    /// else changes.
    pub fn file(text: &str) -> AgentConfig {
        AgentConfig {
            file: Some(text.to_owned()),
            ..AgentConfig::new("")
        }
    }

    /// Sets an environment variable of the agent.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Runs this agent binary instead of [`scaler_bin`].
    pub fn binary(mut self, bin: &Path) -> Self {
        self.binary = Some(bin.to_owned());
        self
    }

    /// Adds `key = value` (TOML) to the `[agent]` table.
    pub fn agent_key(mut self, key: &str, value: &str) -> Self {
        self.agent_keys.push(format!("{key} = {value}"));
        self
    }

    pub fn sample_interval(mut self, interval: &str) -> Self {
        self.sample_interval = interval.into();
        self
    }

    pub fn observe_all(mut self, on: bool) -> Self {
        self.observe_all = on;
        self
    }

    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Starts the agent inside this cgroup (its `cgroup.procs` is written before exec).
    pub fn in_cgroup(mut self, dir: &Path) -> Self {
        self.cgroup = Some(dir.to_owned());
        self
    }

    pub fn quiet(mut self, messages: &[&'static str]) -> Self {
        self.quiet.extend_from_slice(messages);
        self
    }

    /// Starts the agent (see [`TestAgent::start`]).
    pub fn start(self) -> TestAgent {
        TestAgent::start(self)
    }
}

/// A running (or stopped) `scaler agent` of a test, with its private directory.
pub struct TestAgent {
    dir: PathBuf,
    conf: AgentConfig,
    proc: Option<Proc>,
    exit: Option<ExitStatus>,
    log: JsonLog,
    /// The metrics address of this run (from the status document).
    metrics_addr: Mutex<Option<String>>,
}

impl TestAgent {
    /// Writes the configuration into a fresh temp dir, starts `scaler --log-json agent
    /// --config FILE`, and waits (up to 60 s) until it logs that it runs.
    pub fn start(conf: AgentConfig) -> TestAgent {
        let dir = tempdir();
        let mut a = TestAgent {
            dir,
            conf,
            proc: None,
            exit: None,
            log: JsonLog::empty("agent"),
            metrics_addr: Mutex::new(None),
        };
        a.write_config_text(&a.config_text());
        a.spawn();
        a
    }

    /// Starts the agent again with the same configuration, state file and status socket (the
    /// previous run must have ended: see [`TestAgent::stop`]).
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "restart: the agent is still running");
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(self.conf.binary.clone().unwrap_or_else(scaler_bin));
        cmd.arg("--log-json")
            .arg("agent")
            .arg("--config")
            .arg(self.config_path())
            .env("SCALER_LOG", &self.conf.log_filter)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.conf.env {
            cmd.env(k, v);
        }
        let procs = self
            .conf
            .cgroup
            .as_ref()
            .map(|d| enter_cgroup_on_exec(&mut cmd, d));
        let mut child = cmd.spawn().expect("spawning scaler agent");
        drop(procs);
        let stderr = child.stderr.take().expect("stderr");
        self.log = JsonLog::collect(stderr, "agent", &self.conf.quiet);
        self.proc = Some(Proc { child });
        self.exit = None;
        *self.metrics_addr.lock().unwrap() = None;
        if let Err(why) =
            self.log
                .wait(&LogQuery::message(msg::RUNNING), 1, Duration::from_secs(60))
        {
            let status = self.wait_exit(Duration::from_secs(5));
            panic!(
                "scaler agent did not start: {why} (exit status {status:?})\n{}",
                self.log.tail()
            );
        }
    }

    /// The agent's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("scaler.toml")
    }

    pub fn status_socket(&self) -> PathBuf {
        self.dir.join("run/scaler/status.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("lib/scaler/state.json")
    }

    /// The configuration file's text for the current [`AgentConfig`].
    pub fn config_text(&self) -> String {
        let c = &self.conf;
        if let Some(text) = &c.file {
            let owned = ["status_socket", "state_file", "metrics_addr"];
            let mut out = String::new();
            for line in text.lines() {
                let key = line.split('=').next().unwrap_or("").trim();
                if owned.contains(&key) {
                    continue;
                }
                out.push_str(line);
                out.push('\n');
                if line.trim() == "[agent]" {
                    out.push_str(&format!(
                        "status_socket = \"{}\"\nstate_file = \"{}\"\nmetrics_addr = \"127.0.0.1:0\"\n",
                        self.status_socket().display(),
                        self.state_file().display(),
                    ));
                    for k in &c.agent_keys {
                        out.push_str(k);
                        out.push('\n');
                    }
                }
            }
            assert!(
                out.lines().any(|l| l.trim() == "[agent]"),
                "AgentConfig::file needs an [agent] table"
            );
            return out;
        }
        let mut s = format!(
            "[agent]\nstatus_socket = \"{}\"\nstate_file = \"{}\"\nsample_interval = \"{}\"\nobserve_all = {}\n",
            self.status_socket().display(),
            self.state_file().display(),
            c.sample_interval,
            c.observe_all
        );
        if c.metrics {
            s.push_str("metrics_addr = \"127.0.0.1:0\"\n");
        } else {
            s.push_str("metrics = false\n");
        }
        for k in &c.agent_keys {
            s.push_str(k);
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&c.body);
        s
    }

    /// Rewrites the configuration file with a new body (applied on SIGHUP or restart).
    pub fn set_body(&mut self, body: impl Into<String>) {
        self.conf.body = body.into();
        self.write_config_text(&self.config_text());
    }

    /// Writes `text` as the configuration file, as it is.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("writing the agent's configuration");
    }

    /// The pid of the current run.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("the agent runs").pid()
    }

    /// Whether the current run is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.proc {
            Some(p) => matches!(p.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `sig` to the agent, by pid.
    #[track_caller]
    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signalling the agent");
    }

    /// Waits up to `t` for the agent to exit; then every log line is read.
    #[track_caller]
    pub fn wait_exit(&mut self, t: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exit {
            return Some(s);
        }
        let s = self.proc.as_mut()?.wait_timeout(t)?;
        self.exit = Some(s);
        self.proc = None;
        assert!(
            self.log.wait_closed(Duration::from_secs(10)),
            "the agent exited ({s}) but its stderr stays open"
        );
        Some(s)
    }

    /// Sends `sig` and waits (up to 30 s) for the agent to exit; every log line is then read.
    #[track_caller]
    pub fn stop(&mut self, sig: Signal) -> ExitStatus {
        self.signal(sig);
        match self.wait_exit(Duration::from_secs(30)) {
            Some(s) => s,
            None => panic!("the agent did not exit within 30 s of {sig}"),
        }
    }

    /// [`TestAgent::stop`], asserting a clean exit: status 0, and nothing but JSON log
    /// events on stderr (a panic's message, or anything else printed past the logger, is
    /// not).
    #[track_caller]
    pub fn stop_cleanly(&mut self, sig: Signal) {
        let s = self.stop(sig);
        assert!(
            s.success(),
            "the agent exits 0 on {sig}: {s}\n{}",
            self.log.tail()
        );
        self.assert_only_json_on_stderr();
    }

    /// Every stderr line was a JSON log event: no panic message, nothing printed past the
    /// logger.
    #[track_caller]
    pub fn assert_only_json_on_stderr(&self) {
        let stray = self.log.stray();
        assert!(
            stray.is_empty(),
            "the agent wrote lines that are not JSON log events (a panic?):\n{}",
            stray.join("\n")
        );
    }

    // --- log events

    /// The log of the current (or last) run.
    pub fn log(&self) -> &JsonLog {
        &self.log
    }

    /// The events so far that match `q`.
    pub fn events(&self, q: &LogQuery) -> Vec<LogEvent> {
        self.log.find(q)
    }

    /// Whether an event matching `q` was logged.
    pub fn logged(&self, q: &LogQuery) -> bool {
        self.log.count(q) > 0
    }

    /// How many events so far match `q`.
    pub fn count(&self, q: &LogQuery) -> usize {
        self.log.count(q)
    }

    /// Waits (up to `t`) for an event matching `q`, logged before or after the call; panics
    /// naming `q`, why (timeout or exit) and the last lines.
    #[track_caller]
    pub fn wait_event(&self, q: &LogQuery, t: Duration) -> LogEvent {
        self.log.wait_one(q, t)
    }

    /// Waits (up to `t`) until `n` events match `q`.
    #[track_caller]
    pub fn wait_events(&self, q: &LogQuery, n: usize, t: Duration) -> Vec<LogEvent> {
        match self.log.wait(q, n, t) {
            Ok(v) => v,
            Err(why) => panic!("{why}\n{}", self.log.tail()),
        }
    }

    // --- the audit trail

    /// The audit records so far.
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.log
            .find(&LogQuery::any().target(AUDIT_TARGET))
            .iter()
            .filter_map(AuditRecord::from_event)
            .collect()
    }

    /// The audit records of `cgroup` so far.
    pub fn audit_of(&self, cgroup: &str) -> Vec<AuditRecord> {
        self.audit()
            .into_iter()
            .filter(|r| r.cgroup == cgroup)
            .collect()
    }

    /// Waits (up to `t`) until the audit trail has at least `n` records; returns them all.
    #[track_caller]
    pub fn wait_audit_records(&self, n: usize, t: Duration) -> Vec<AuditRecord> {
        let found = self.log.wait_for(&"the audit trail", n, t, |e| {
            AuditRecord::from_event(e).is_some()
        });
        match found {
            Ok(_) => self.audit(),
            Err(why) => panic!("{why}\n{}", self.log.tail()),
        }
    }

    /// Waits (up to `t`) for an audit record `pred` accepts (`what` names it on failure).
    #[track_caller]
    pub fn wait_audit(
        &self,
        what: &str,
        t: Duration,
        pred: impl Fn(&AuditRecord) -> bool,
    ) -> AuditRecord {
        let found = self
            .log
            .wait_for(&format!("the audit trail: {what}"), 1, t, |e| {
                AuditRecord::from_event(e).is_some_and(|r| pred(&r))
            });
        match found {
            Ok(v) => AuditRecord::from_event(&v[0]).expect("an audit record"),
            Err(why) => panic!("{why}\n{}", self.log.tail()),
        }
    }

    // --- the status API

    /// `scaler status --json --socket SOCKET`.
    #[track_caller]
    pub fn status(&self) -> Status {
        let out = Command::new(scaler_bin())
            .args(["status", "--json", "--socket"])
            .arg(self.status_socket())
            .env_remove("RUST_LOG")
            .output()
            .expect("running scaler status");
        assert!(
            out.status.success(),
            "scaler status: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log.tail()
        );
        Status(serde_json::from_slice(&out.stdout).expect("status JSON"))
    }

    /// `scaler status --socket SOCKET` (the table).
    #[track_caller]
    pub fn status_table(&self) -> String {
        let out = Command::new(scaler_bin())
            .args(["status", "--socket"])
            .arg(self.status_socket())
            .env_remove("RUST_LOG")
            .output()
            .expect("running scaler status");
        assert!(
            out.status.success(),
            "scaler status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 table")
    }

    /// Polls the status until `pred` holds (up to `t`); returns it.
    #[track_caller]
    pub fn wait_status(&self, what: &str, t: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        let start = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < t,
                "waited {t:?} for the status to show {what}; last status: {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the memory cgroup `path` is managed (or not), up to `t`; returns how long
    /// it took.
    #[track_caller]
    pub fn wait_managed(&self, path: &str, managed: bool, t: Duration) -> Duration {
        let start = Instant::now();
        let what = format!("{path} {}", if managed { "managed" } else { "not managed" });
        self.wait_status(&what, t, |s| s.managed(path).is_some() == managed);
        start.elapsed()
    }

    // --- metrics

    /// Where this run serves `/metrics` (the status document's `metrics_addr`).
    #[track_caller]
    pub fn metrics_addr(&self) -> String {
        let mut cached = self.metrics_addr.lock().unwrap();
        if cached.is_none() {
            let s = self.status();
            let Some(addr) = s["metrics_addr"].as_str() else {
                panic!("the agent serves no metrics: {s}");
            };
            *cached = Some(addr.to_owned());
        }
        cached.clone().unwrap()
    }

    /// `GET /metrics`, checked to be a 200 with the OpenMetrics content type, parsed.
    #[track_caller]
    pub fn scrape(&self) -> Scrape {
        let (content_type, body) =
            self.get_metrics("Accept: application/openmetrics-text;version=1.0.0\r\n");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "Content-Type {content_type:?}"
        );
        Scrape::parse(&body)
    }

    /// `/metrics` as `curl` and `promtool check metrics` get it (no `Accept`): the
    /// Content-Type (the Prometheus text format 0.0.4 is `text/plain; version=0.0.4`) and the
    /// body.
    pub fn scrape_text(&self) -> (String, String) {
        self.get_metrics("")
    }

    /// `GET /metrics` with `headers` (each ending in CRLF): the Content-Type and the body.
    fn get_metrics(&self, headers: &str) -> (String, String) {
        let addr = self.metrics_addr();
        let mut s = TcpStream::connect(&addr)
            .unwrap_or_else(|e| panic!("connecting to the metrics address {addr}: {e}"));
        s.write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
            )
            .as_bytes(),
        )
        .expect("sending the request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("reading the response");
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default();
        assert!(status.starts_with("HTTP/1.1 200"), "{head}");
        let content_type = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        (content_type, body.to_owned())
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Proc's drop kills (by pid) and reaps a run still going.
        self.proc = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
