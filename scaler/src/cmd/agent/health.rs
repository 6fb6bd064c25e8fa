//! Saying when sick: the agent's liveness (`/healthz`: the engine thread's heartbeat is fresh),
//! its readiness (`/readyz`: programs attached, the first discovery done, and alive), and the
//! systemd notification protocol (`READY=1`, `WATCHDOG=1`, `STOPPING=1` on `NOTIFY_SOCKET`).
//!
//! A monitor thread checks the engine every [`CHECK_EVERY`]: when the engine thread has ended
//! (a panic) or its heartbeat is older than [`EXIT_AFTER_STALL`], it tells the agent's main
//! loop, which restores the limits as configured and exits with [`super::EXIT_ENGINE_FAILED`].
//! While the engine is healthy it sends `WATCHDOG=1` every half of `WATCHDOG_USEC`; a stalled
//! or dead engine gets no pings, so systemd's `WatchdogSec` restarts an agent that could not
//! even exit.

use std::{
    ffi::OsStr,
    os::unix::{
        ffi::OsStrExt,
        net::{SocketAddr as UnixAddr, UnixDatagram},
    },
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use crate::{clock::monotonic_ns, engine::EngineStats};

/// The engine is not live (`/healthz` fails, no watchdog ping) when its heartbeat is older than
/// this. The loop beats at least every engine tick (100 ms) when idle.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// The agent gives up on a stalled engine (restores limits and exits) after this long without
/// a heartbeat: longer than [`STALL_AFTER`], since a limit write that reclaims can legitimately
/// take a while.
pub const EXIT_AFTER_STALL: Duration = Duration::from_secs(5);
/// How often the monitor thread looks at the engine.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What the health endpoints and the monitor read. Cheap to share.
pub struct Health {
    engine: Arc<EngineStats>,
    /// Monotonic ns when the engine started (its heartbeat before the first beat).
    started_ns: u64,
    /// `None` once ready; otherwise why not.
    not_ready: Mutex<Option<String>>,
    /// Optional programs that are not attached (named in `/readyz`'s body; not a failure).
    notes: Mutex<Vec<String>>,
}

/// The engine's state as the monitor sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineHealth {
    Alive { heartbeat_age: Duration },
    Stalled { heartbeat_age: Duration },
    Exited,
}

impl EngineHealth {
    pub fn is_alive(&self) -> bool {
        matches!(self, EngineHealth::Alive { .. })
    }

    /// One line for a log event or an HTTP body.
    pub fn describe(&self) -> String {
        match self {
            EngineHealth::Alive { heartbeat_age } => {
                format!(
                    "engine alive (heartbeat {} ms ago)",
                    heartbeat_age.as_millis()
                )
            }
            EngineHealth::Stalled { heartbeat_age } => format!(
                "engine stalled: no heartbeat for {} ms (limit {} ms)",
                heartbeat_age.as_millis(),
                STALL_AFTER.as_millis()
            ),
            EngineHealth::Exited => "engine thread exited (panicked)".to_owned(),
        }
    }
}

impl Health {
    pub fn new(engine: Arc<EngineStats>) -> Self {
        Self {
            engine,
            started_ns: monotonic_ns(),
            not_ready: Mutex::new(Some("starting: the first discovery is not done".into())),
            notes: Mutex::new(Vec::new()),
        }
    }

    /// The engine's state now.
    pub fn engine(&self) -> EngineHealth {
        if self.engine.exited.load(Ordering::SeqCst) {
            return EngineHealth::Exited;
        }
        let beat = match self.engine.loop_stats.heartbeat_ns.load(Ordering::Relaxed) {
            0 => self.started_ns,
            b => b,
        };
        let heartbeat_age = Duration::from_nanos(monotonic_ns().saturating_sub(beat));
        if heartbeat_age > STALL_AFTER {
            EngineHealth::Stalled { heartbeat_age }
        } else {
            EngineHealth::Alive { heartbeat_age }
        }
    }

    /// Ready from now on (programs attached, first discovery and reconcile done).
    pub fn set_ready(&self) {
        *super::lock(&self.not_ready) = None;
    }

    /// Not ready, and why (shutting down, ...).
    pub fn set_not_ready(&self, why: impl Into<String>) {
        *super::lock(&self.not_ready) = Some(why.into());
    }

    /// An optional program that is not attached (said in `/readyz`'s body).
    pub fn note(&self, note: impl Into<String>) {
        super::lock(&self.notes).push(note.into());
    }

    /// `/healthz`: `Ok(body)` when the engine is alive, `Err(body)` saying why not.
    pub fn liveness(&self) -> Result<String, String> {
        let e = self.engine();
        if e.is_alive() {
            Ok(format!("ok: {}\n", e.describe()))
        } else {
            Err(format!("unhealthy: {}\n", e.describe()))
        }
    }

    /// `/readyz`: `Ok(body)` when alive and ready, `Err(body)` saying why not.
    pub fn readiness(&self) -> Result<String, String> {
        let e = self.engine();
        if !e.is_alive() {
            return Err(format!("not ready: {}\n", e.describe()));
        }
        if let Some(why) = super::lock(&self.not_ready).as_ref() {
            return Err(format!("not ready: {why}\n"));
        }
        let mut body = format!(
            "ready: programs attached, discovery done, {}\n",
            e.describe()
        );
        for n in super::lock(&self.notes).iter() {
            body.push_str("note: ");
            body.push_str(n);
            body.push('\n');
        }
        Ok(body)
    }
}

/// The systemd notification socket (`NOTIFY_SOCKET`: a path, or `@name` for an abstract
/// socket), read once at start.
pub struct Notifier {
    sock: UnixDatagram,
    target: String,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when it is unset or empty. A socket that cannot be reached
    /// is logged and ignored (the agent runs without notifications).
    pub fn from_env() -> Option<Notifier> {
        let raw = std::env::var_os("NOTIFY_SOCKET")?;
        if raw.is_empty() {
            return None;
        }
        match Self::connect(&raw) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(
                    socket = %raw.to_string_lossy(),
                    "NOTIFY_SOCKET is set but cannot be reached ({e}); no systemd notifications"
                );
                None
            }
        }
    }

    /// Connects to `target` (a path, or `@name`: the abstract name `name`).
    pub fn connect(target: &OsStr) -> std::io::Result<Notifier> {
        let sock = UnixDatagram::unbound()?;
        let bytes = target.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            sock.connect_addr(&UnixAddr::from_abstract_name(name)?)?;
        } else {
            sock.connect(target)?;
        }
        Ok(Notifier {
            sock,
            target: target.to_string_lossy().into_owned(),
        })
    }

    /// Sends one notification (`READY=1`, ...); a failure is logged at debug level.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.sock.send(state.as_bytes()) {
            tracing::debug!(socket = %self.target, "sd_notify {state}: {e}");
        }
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process when
/// `WATCHDOG_PID` is set): pings go out every half of it.
pub fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts the monitor thread: every [`CHECK_EVERY`] it checks the engine; it pings the
/// watchdog (every `watchdog / 2`) while the engine is alive, and calls `failed` once with the
/// reason when the engine thread has exited or stalled for [`EXIT_AFTER_STALL`].
pub fn monitor(
    health: Arc<Health>,
    notifier: Option<Arc<Notifier>>,
    watchdog: Option<Duration>,
    failed: impl FnOnce(String) + Send + 'static,
) -> std::io::Result<()> {
    let ping_every = watchdog.map(|w| w / 2);
    std::thread::Builder::new()
        .name("health".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let mut failed = Some(failed);
            let mut last_ping: Option<std::time::Instant> = None;
            let mut stall_logged = false;
            loop {
                let e = health.engine();
                match &e {
                    EngineHealth::Alive { .. } => {
                        if stall_logged {
                            tracing::warn!("{}: the engine recovered", e.describe());
                            stall_logged = false;
                        }
                        if let (Some(n), Some(every)) = (&notifier, ping_every) {
                            if last_ping.is_none_or(|t| t.elapsed() >= every) {
                                n.send("WATCHDOG=1");
                                last_ping = Some(std::time::Instant::now());
                            }
                        }
                    }
                    EngineHealth::Stalled { heartbeat_age } => {
                        if !stall_logged {
                            tracing::error!("{}; liveness fails, no watchdog ping", e.describe());
                            stall_logged = true;
                        }
                        if *heartbeat_age >= EXIT_AFTER_STALL {
                            if let Some(f) = failed.take() {
                                f(e.describe());
                            }
                        }
                    }
                    EngineHealth::Exited => {
                        if let Some(f) = failed.take() {
                            f(e.describe());
                        }
                    }
                }
                std::thread::sleep(CHECK_EVERY);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_heartbeat_and_the_exit_flag() {
        let stats = Arc::new(EngineStats::default());
        let h = Health::new(stats.clone());
        stats
            .loop_stats
            .heartbeat_ns
            .store(monotonic_ns(), Ordering::Relaxed);
        assert!(h.liveness().unwrap().starts_with("ok: engine alive"));
        // Not ready until the first discovery; then ready.
        assert!(h.readiness().unwrap_err().contains("first discovery"));
        h.set_ready();
        h.note("sched_switch: not attached");
        let r = h.readiness().unwrap();
        assert!(
            r.contains("ready") && r.contains("note: sched_switch"),
            "{r}"
        );
        // An old heartbeat is a stall.
        stats.loop_stats.heartbeat_ns.store(
            monotonic_ns() - 2 * STALL_AFTER.as_nanos() as u64,
            Ordering::Relaxed,
        );
        assert!(matches!(h.engine(), EngineHealth::Stalled { .. }));
        assert!(h.liveness().unwrap_err().contains("engine stalled"));
        assert!(h.readiness().unwrap_err().contains("engine stalled"));
        stats.exited.store(true, Ordering::SeqCst);
        assert_eq!(h.engine(), EngineHealth::Exited);
        assert!(h.liveness().unwrap_err().contains("exited"));
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::connect(path.as_os_str()).unwrap().send("READY=1");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("scaler-test-notify-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::connect(OsStr::new(&format!("@{name}")))
            .unwrap()
            .send("WATCHDOG=1");
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn faults_parse() {
        use crate::engine::{EngineFault, FaultKind, FaultTrigger};
        assert_eq!(
            EngineFault::parse("engine-panic:500"),
            Some(EngineFault {
                kind: FaultKind::Panic,
                when: FaultTrigger::After(Duration::from_millis(500))
            })
        );
        assert_eq!(
            EngineFault::parse("engine-stall:/tmp/x"),
            Some(EngineFault {
                kind: FaultKind::Stall,
                when: FaultTrigger::FileExists("/tmp/x".into())
            })
        );
        assert_eq!(EngineFault::parse("engine-panic"), None);
        assert_eq!(EngineFault::parse("engine-panic:soon"), None);
        assert_eq!(EngineFault::parse("nope:1"), None);
        assert_eq!(
            EngineFault::parse("refuse-writes:/tmp/r").map(|f| f.kind),
            Some(crate::engine::FaultKind::RefuseWrites)
        );
    }
}
