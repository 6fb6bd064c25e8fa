//! The JSON log lines of a child `scaler --log-json ...` (tracing-subscriber's JSON format on
//! stderr), collected as they come and queried by message, target, level and fields.
//!
//! One line looks like
//! `{"timestamp":"...","level":"INFO","fields":{"message":"managing","cgroup":"/a/b",...},"target":"scaler::cmd::agent"}`;
//! fields recorded with `%` (Display) arrive as strings, integers and floats as JSON numbers.

use std::{
    collections::VecDeque,
    fmt,
    io::{BufRead, BufReader, Read},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Map, Value};

/// One log event.
#[derive(Clone, Debug)]
pub struct LogEvent {
    /// Its position among the process's JSON lines (0-based).
    pub seq: usize,
    /// `TRACE` .. `ERROR`.
    pub level: String,
    /// The tracing target (the module, or an explicit `target:` such as `scaler::audit`).
    pub target: String,
    /// `fields.message`.
    pub message: String,
    /// The other fields.
    pub fields: Map<String, Value>,
    /// The whole line, parsed.
    pub raw: Value,
}

impl LogEvent {
    /// Parses one line; `None` if it is not a JSON log event.
    pub fn parse(seq: usize, line: &str) -> Option<LogEvent> {
        let raw: Value = serde_json::from_str(line).ok()?;
        let obj = raw.as_object()?;
        let mut fields = obj.get("fields")?.as_object()?.clone();
        let message = match fields.remove("message") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        Some(LogEvent {
            seq,
            level: obj.get("level")?.as_str()?.to_owned(),
            target: obj
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            message,
            fields,
            raw,
        })
    }

    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A field as text: strings as they are, numbers and booleans as JSON writes them.
    pub fn text(&self, name: &str) -> Option<String> {
        self.field(name).map(value_text)
    }

    /// A field as an unsigned integer (a JSON number, or a decimal string from a `%` field).
    pub fn u64(&self, name: &str) -> Option<u64> {
        match self.field(name)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A field as a signed integer.
    pub fn i64(&self, name: &str) -> Option<i64> {
        match self.field(name)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A field as a float.
    pub fn f64(&self, name: &str) -> Option<f64> {
        match self.field(name)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A boolean field.
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.field(name)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `LEVEL target: message k=v ...`, for test output.
impl fmt::Display for LogEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.level, self.target, self.message)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={}", value_text(v))?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Cond {
    Eq(String),
    /// The path itself or one below it.
    Under(String),
    Present,
}

/// Which events to find: an exact message (or any), optionally a target and a level, and field
/// conditions (compared as [`LogEvent::text`]).
#[derive(Clone, Debug)]
pub struct LogQuery {
    message: Option<String>,
    target: Option<String>,
    level: Option<String>,
    conds: Vec<(String, Cond)>,
}

impl LogQuery {
    /// Events whose `fields.message` is exactly `message`.
    pub fn message(message: &str) -> LogQuery {
        LogQuery {
            message: Some(message.to_owned()),
            target: None,
            level: None,
            conds: Vec::new(),
        }
    }

    /// Events with any message (narrowed by the other conditions).
    pub fn any() -> LogQuery {
        LogQuery {
            message: None,
            target: None,
            level: None,
            conds: Vec::new(),
        }
    }

    /// ... of this tracing target.
    pub fn target(mut self, target: &str) -> LogQuery {
        self.target = Some(target.to_owned());
        self
    }

    /// ... at this level (`INFO`, `WARN`, ...).
    pub fn level(mut self, level: &str) -> LogQuery {
        self.level = Some(level.to_uppercase());
        self
    }

    /// ... whose field `name` is `value` (as text: `64` matches the number 64 and the
    /// string "64").
    pub fn field(mut self, name: &str, value: impl fmt::Display) -> LogQuery {
        self.conds
            .push((name.to_owned(), Cond::Eq(value.to_string())));
        self
    }

    /// ... whose field `name` is the path `dir` or a path below it.
    pub fn field_under(mut self, name: &str, dir: &str) -> LogQuery {
        self.conds.push((
            name.to_owned(),
            Cond::Under(dir.trim_end_matches('/').to_owned()),
        ));
        self
    }

    /// ... that have a field `name`.
    pub fn has_field(mut self, name: &str) -> LogQuery {
        self.conds.push((name.to_owned(), Cond::Present));
        self
    }

    pub fn matches(&self, e: &LogEvent) -> bool {
        self.message.as_ref().is_none_or(|m| *m == e.message)
            && self.target.as_ref().is_none_or(|t| *t == e.target)
            && self.level.as_ref().is_none_or(|l| *l == e.level)
            && self.conds.iter().all(|(name, c)| {
                let Some(v) = e.text(name) else {
                    return false;
                };
                match c {
                    Cond::Eq(want) => v == *want,
                    Cond::Under(dir) => {
                        v == *dir
                            || v.strip_prefix(dir.as_str())
                                .is_some_and(|rest| rest.starts_with('/'))
                    }
                    Cond::Present => true,
                }
            })
    }
}

impl fmt::Display for LogQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "message {m:?}")?,
            None => f.write_str("any message")?,
        }
        if let Some(l) = &self.level {
            write!(f, " at {l}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " of target {t}")?;
        }
        for (i, (name, c)) in self.conds.iter().enumerate() {
            f.write_str(if i == 0 { " with " } else { ", " })?;
            match c {
                Cond::Eq(v) => write!(f, "{name}={v:?}")?,
                Cond::Under(d) => write!(f, "{name} under {d:?}")?,
                Cond::Present => write!(f, "a field {name}")?,
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Lines {
    events: Vec<LogEvent>,
    /// Lines that are not JSON log events (a panic message, a stray print).
    stray: Vec<String>,
    /// The last lines as read, for failure messages.
    tail: VecDeque<String>,
    /// The stream ended (the process exited or closed stderr).
    closed: bool,
}

/// How many raw lines [`JsonLog::tail`] keeps.
const TAIL: usize = 25;

/// The JSON log of one process, read by a background thread.
#[derive(Clone)]
pub struct JsonLog {
    name: String,
    shared: Arc<(Mutex<Lines>, Condvar)>,
}

impl JsonLog {
    /// Reads `stream` (a child's stderr) line by line in a background thread. Each line is
    /// echoed on the test's stderr as `  [name] ...` (captured by libtest unless
    /// `--nocapture`), except events whose message is one of `quiet` (per-cgroup lines of the
    /// load tests).
    pub fn collect(stream: impl Read + Send + 'static, name: &str, quiet: &[&str]) -> JsonLog {
        let log = JsonLog {
            name: name.to_owned(),
            shared: Arc::default(),
        };
        let shared = log.shared.clone();
        let prefix = format!("  [{name}]");
        let quiet: Vec<String> = quiet.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let (lock, cv) = &*shared;
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut l = lock.lock().unwrap();
                let seq = l.events.len();
                let shown = match LogEvent::parse(seq, &line) {
                    Some(e) => {
                        let shown = e.to_string();
                        if !quiet.contains(&e.message) {
                            eprintln!("{prefix} {shown}");
                        }
                        l.events.push(e);
                        shown
                    }
                    None => {
                        eprintln!("{prefix} (not JSON) {line}");
                        l.stray.push(line.clone());
                        format!("(not JSON) {line}")
                    }
                };
                if l.tail.len() == TAIL {
                    l.tail.pop_front();
                }
                l.tail.push_back(shown);
                cv.notify_all();
            }
            lock.lock().unwrap().closed = true;
            cv.notify_all();
        });
        log
    }

    /// A log with no lines, already ended.
    pub fn empty(name: &str) -> JsonLog {
        let log = JsonLog {
            name: name.to_owned(),
            shared: Arc::default(),
        };
        log.shared.0.lock().unwrap().closed = true;
        log
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<LogEvent> {
        self.shared.0.lock().unwrap().events.clone()
    }

    /// The events so far that match `q`.
    pub fn find(&self, q: &LogQuery) -> Vec<LogEvent> {
        let l = self.shared.0.lock().unwrap();
        l.events.iter().filter(|e| q.matches(e)).cloned().collect()
    }

    /// How many events so far match `q`.
    pub fn count(&self, q: &LogQuery) -> usize {
        let l = self.shared.0.lock().unwrap();
        l.events.iter().filter(|e| q.matches(e)).count()
    }

    /// Lines that were not JSON log events.
    pub fn stray(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().stray.clone()
    }

    /// Whether the stream has ended.
    pub fn closed(&self) -> bool {
        self.shared.0.lock().unwrap().closed
    }

    /// The last lines read, one per line, for failure messages.
    pub fn tail(&self) -> String {
        let l = self.shared.0.lock().unwrap();
        let mut s = format!(
            "last {} of {} lines of {}:",
            l.tail.len(),
            l.events.len() + l.stray.len(),
            self.name
        );
        for line in &l.tail {
            s.push_str("\n  ");
            s.push_str(line);
        }
        s
    }

    /// Waits until at least `n` events match `q` (counting those logged before the call), up
    /// to `timeout`. `Err` says why not (timed out, or the stream ended first) and how many
    /// matched.
    pub fn wait(&self, q: &LogQuery, n: usize, timeout: Duration) -> Result<Vec<LogEvent>, String> {
        self.wait_for(q, n, timeout, |e| q.matches(e))
    }

    /// Like [`JsonLog::wait`], for the events `pred` accepts (`what` names them in the error).
    pub fn wait_for(
        &self,
        what: &dyn fmt::Display,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&LogEvent) -> bool,
    ) -> Result<Vec<LogEvent>, String> {
        let end = Instant::now() + timeout;
        let (lock, cv) = &*self.shared;
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut l = lock.lock().unwrap();
        loop {
            found.extend(l.events[scanned..].iter().filter(|e| pred(e)).cloned());
            scanned = l.events.len();
            if found.len() >= n {
                return Ok(found);
            }
            if l.closed {
                return Err(format!(
                    "the log of {} ended (the process exited) while waiting for {n} event(s) of \
                     {what}: {} seen",
                    self.name,
                    found.len()
                ));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "waited {timeout:?} for {n} event(s) of {what} in the log of {}: {} seen",
                    self.name,
                    found.len()
                ));
            }
            l = cv.wait_timeout(l, left).unwrap().0;
        }
    }

    /// Waits until the stream ends (after the process exited: every line is read).
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.shared;
        let l = lock.lock().unwrap();
        let (l, _) = cv.wait_timeout_while(l, timeout, |l| !l.closed).unwrap();
        l.closed
    }

    /// Like [`JsonLog::wait`] for one event; panics on failure with what it waited for and
    /// the last lines.
    #[track_caller]
    pub fn wait_one(&self, q: &LogQuery, timeout: Duration) -> LogEvent {
        match self.wait(q, 1, timeout) {
            Ok(mut v) => v.remove(0),
            Err(why) => panic!("{why}\n{}", self.tail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_queries_match_fields_as_text() {
        let line = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","fields":{"message":"managing","cgroup":"/a/b","min":16777216,"limit":"67108864"},"target":"scaler::cmd::agent"}"#;
        let e = LogEvent::parse(0, line).unwrap();
        assert_eq!(e.message, "managing");
        assert_eq!(e.u64("limit"), Some(64 << 20));
        assert_eq!(e.u64("min"), Some(16 << 20));
        assert!(LogQuery::message("managing")
            .field("cgroup", "/a/b")
            .field("min", 16u64 << 20)
            .level("info")
            .matches(&e));
        assert!(LogQuery::any().field_under("cgroup", "/a/").matches(&e));
        assert!(LogQuery::any().field_under("cgroup", "/a/b").matches(&e));
        assert!(!LogQuery::any().field_under("cgroup", "/a/b/c").matches(&e));
        assert!(!LogQuery::any().field_under("cgroup", "/a/bc").matches(&e));
        assert!(!LogQuery::message("managin").matches(&e));
        assert!(!LogQuery::message("managing")
            .target("scaler::audit")
            .matches(&e));
        assert!(!LogQuery::any().has_field("errno").matches(&e));
        assert!(LogEvent::parse(0, "thread 'main' panicked at src/x.rs:1:1").is_none());
        assert_eq!(
            LogQuery::message("managing")
                .field("cgroup", "/a")
                .to_string(),
            "message \"managing\" with cgroup=\"/a\""
        );
    }

    #[test]
    fn waits_see_earlier_events_and_end_with_the_stream() {
        let text =
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"a\"},\"target\":\"t\"}\nnot json\n";
        let log = JsonLog::collect(std::io::Cursor::new(text.as_bytes().to_vec()), "t", &[]);
        assert!(log.wait_closed(Duration::from_secs(5)));
        assert_eq!(log.wait_one(&LogQuery::message("a"), Duration::ZERO).seq, 0);
        assert_eq!(log.stray(), vec!["not json".to_owned()]);
        let err = log
            .wait(&LogQuery::message("b"), 1, Duration::from_secs(5))
            .unwrap_err();
        assert!(err.contains("ended"), "{err}");
    }
}
