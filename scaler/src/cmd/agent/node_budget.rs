//! The node budget on the agent's slow side: the kubelet's configuration file, read again at
//! every sample, and the node's memory figures of the last sample (for the engine's budget,
//! the metrics, `scaler status` and the logs of refused raises). The rule is in
//! [`crate::node`]; the file's format in [`crate::kubelet`].
//!
//! The file is trusted only if no unprivileged user can write it (a regular file owned by
//! root, not writable by group or others): a lower reserve would let raises push the node into
//! eviction. A file that cannot be read, is not trusted or cannot be used is an error, logged
//! (naming the file and the key at fault) and counted once per change of the file or of the
//! error; the last good figures stay in force, or the kubelet's defaults if none was read yet.
//! The default path (`node.kubelet_config` not given) is used only while it exists: on a node
//! without a kubelet nothing is read.

use std::{collections::HashMap, io::Read as _, os::unix::fs::MetadataExt, path::Path};

use crate::{
    config::KubeletSource,
    decider::CgId,
    kubelet::{self, KubeletMemory},
    node::NodeMemory,
};

/// What one read of the file gave.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Read {
    Text(Vec<u8>),
    Missing,
    Failed(String),
}

/// Why the figures in force are not the file's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchError {
    /// The key at fault, or `(file)`.
    pub key: String,
    pub message: String,
}

/// The kubelet's configuration file, watched.
#[derive(Debug)]
pub struct KubeletWatch {
    source: KubeletSource,
    last: Option<Read>,
    good: Option<KubeletMemory>,
    error: Option<WatchError>,
    errors: u64,
    fallback: KubeletMemory,
}

fn read(path: &Path) -> Read {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Missing,
        Err(e) => return Read::Failed(format!("cannot be read: {e}")),
    };
    if !meta.is_file() {
        return Read::Failed("is not a regular file".into());
    }
    if meta.uid() != 0 {
        return Read::Failed(format!(
            "is owned by uid {}, not root: only a file no unprivileged user can write is \
             trusted (it could lower the reserve)",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Read::Failed(format!(
            "is writable by its group or others (mode {:o}): only a file no unprivileged user \
             can write is trusted (it could lower the reserve)",
            meta.mode() & 0o7777
        ));
    }
    let mut text = Vec::new();
    let r = std::fs::File::open(path)
        .and_then(|f| f.take(kubelet::MAX_CONFIG_BYTES + 1).read_to_end(&mut text));
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Read::Missing,
        Err(e) => Read::Failed(format!("cannot be read: {e}")),
        Ok(_) if text.len() as u64 > kubelet::MAX_CONFIG_BYTES => Read::Failed(format!(
            "is larger than {} bytes: not a kubelet configuration",
            kubelet::MAX_CONFIG_BYTES
        )),
        Ok(_) => Read::Text(text),
    }
}

fn parse(text: &[u8]) -> Result<KubeletMemory, kubelet::KubeletConfigError> {
    std::str::from_utf8(text)
        .map_err(|e| kubelet::KubeletConfigError {
            key: "(file)".into(),
            message: format!("is not UTF-8 text: {e}"),
        })
        .and_then(kubelet::parse_config)
}

/// Reads and parses `source` once, logging nothing (`scaler check-config`): `Ok(None)` when
/// none is read (off, or the default path does not exist).
pub fn load_once(source: &KubeletSource) -> Result<Option<KubeletMemory>, WatchError> {
    let Some(path) = source.path() else {
        return Ok(None);
    };
    let fail = |message: String| WatchError {
        key: "(file)".into(),
        message,
    };
    match read(path) {
        Read::Missing if matches!(source, KubeletSource::Auto(_)) => Ok(None),
        Read::Missing => Err(fail("does not exist".into())),
        Read::Failed(e) => Err(fail(e)),
        Read::Text(t) => parse(&t).map(Some).map_err(|e| WatchError {
            key: e.key,
            message: e.message,
        }),
    }
}

impl KubeletWatch {
    /// Watches `source` (nothing is read before the first [`KubeletWatch::poll`]).
    pub fn new(source: KubeletSource) -> Self {
        Self {
            source,
            last: None,
            good: None,
            error: None,
            errors: 0,
            fallback: KubeletMemory::default(),
        }
    }

    pub fn source(&self) -> &KubeletSource {
        &self.source
    }

    /// The file whose figures are in force (`None`: no kubelet configuration is read).
    pub fn path(&self) -> Option<&Path> {
        self.current().and(self.source.path())
    }

    /// Reads of the file that could not be used, since start.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The error of the last read, if it could not be used.
    pub fn error(&self) -> Option<&WatchError> {
        self.error.as_ref()
    }

    /// Whether the figures in force are the file's (not the defaults kept after an error).
    pub fn from_file(&self) -> bool {
        self.good.is_some()
    }

    /// The kubelet's figures in force: the file's, the last good ones after an error, the
    /// kubelet's defaults after an error with none read yet; `None` when no kubelet
    /// configuration is read (off, or the default path does not exist).
    pub fn current(&self) -> Option<&KubeletMemory> {
        if matches!(self.source, KubeletSource::Off) {
            return None;
        }
        match (&self.good, &self.error) {
            (Some(k), _) => Some(k),
            (None, Some(_)) => Some(&self.fallback),
            (None, None) => None,
        }
    }

    /// Reads the file again; a change is logged. Returns whether the figures in force changed.
    pub fn poll(&mut self) -> bool {
        let Some(path) = self.source.path().map(Path::to_path_buf) else {
            return false;
        };
        let now = read(&path);
        if self.last.as_ref() == Some(&now) {
            return false;
        }
        let before = self.current().cloned();
        let auto = matches!(self.source, KubeletSource::Auto(_));
        match &now {
            Read::Missing if auto && self.good.is_none() && self.error.is_none() => {}
            Read::Missing => self.fail(
                &path,
                "(file)",
                if auto {
                    "does not exist any more".to_owned()
                } else {
                    "does not exist (node.kubelet_config names it; give \"\" to read none)"
                        .to_owned()
                },
            ),
            Read::Failed(e) => self.fail(&path, "(file)", e.clone()),
            Read::Text(t) => match parse(t) {
                Ok(k) => {
                    if self.good.as_ref() != Some(&k) || self.error.is_some() {
                        tracing::info!(
                            kubelet_config = %path.display(),
                            kube_reserved = k.kube_reserved,
                            system_reserved = k.system_reserved,
                            eviction_hard = %k.eviction_hard,
                            eviction_soft = k.eviction_soft.map(tracing::field::display),
                            figures = %k.describe(),
                            "kubelet configuration read"
                        );
                    }
                    self.good = Some(k);
                    self.error = None;
                }
                Err(e) => self.fail(&path, &e.key, e.message),
            },
        }
        self.last = Some(now);
        before.as_ref() != self.current()
    }

    fn fail(&mut self, path: &Path, key: &str, message: String) {
        self.errors += 1;
        let keeping = if self.good.is_some() {
            "the last good figures stay in force"
        } else {
            "the kubelet's defaults (evictionHard memory.available 100Mi, no reservations) are \
             in force until it is fixed"
        };
        tracing::error!(
            kubelet_config = %path.display(),
            key,
            error = %message,
            keeping,
            detail = %format!(
                "the kubelet's configuration {}: `{key}`: {message}; {keeping}",
                path.display()
            ),
            "kubelet configuration unusable"
        );
        self.error = Some(WatchError {
            key: key.to_owned(),
            message,
        });
    }
}

/// The node budget's state on the slow side.
#[derive(Debug)]
pub struct NodeState {
    pub watch: KubeletWatch,
    /// The figures of the last sample.
    pub figures: Option<NodeMemory>,
    /// What gives the room, in words, for the logs of refused raises.
    pub note: String,
}

impl NodeState {
    pub fn new(source: KubeletSource) -> Self {
        Self {
            watch: KubeletWatch::new(source),
            figures: None,
            note: String::new(),
        }
    }

    /// Reads the kubelet's file (if changed) and `/proc/meminfo`, and computes the figures of
    /// this sample under `config` (a change of the reserve in force is logged).
    pub fn sample(
        &mut self,
        config: &crate::config::Config,
        node: &crate::config::NodeInfo,
    ) -> std::io::Result<NodeMemory> {
        if self.watch.source() != &config.kubelet_source() {
            // A reload changed node.kubelet_config.
            self.watch = KubeletWatch::new(config.kubelet_source());
        }
        self.watch.poll();
        let meminfo = crate::node::MemInfo::read()?;
        let kubelet = self.watch.current();
        let f = NodeMemory::compute(
            meminfo,
            config.memory_reserve(node),
            kubelet,
            config.kubelet_eviction_margin(),
        );
        let path = self.watch.source().path().map(|p| p.display().to_string());
        let note = f.explain(path.as_deref().zip(kubelet));
        let changed = self.figures.is_none_or(|old| {
            (old.bound, old.reserve(), old.kubelet.map(|k| k.total()))
                != (f.bound, f.reserve(), f.kubelet.map(|k| k.total()))
        });
        if changed {
            tracing::info!(
                reserve = f.reserve(),
                config_reserve = f.config_reserve,
                kubelet_eviction = f.kubelet.map(|k| k.eviction),
                kubelet_reserved = f.kubelet.map(|k| k.reserved),
                kubelet_config = path.as_deref().filter(|_| kubelet.is_some()),
                bound = f.bound.as_str(),
                room = f.room,
                detail = %note,
                "node memory reserve"
            );
        }
        self.figures = Some(f);
        self.note = note;
        Ok(f)
    }
}

/// The usage of the managed cgroups that have no managed ancestor (their usages are disjoint),
/// given each managed cgroup's path and usage.
pub fn top_level_usage<'a>(
    managed: impl Iterator<Item = (CgId, &'a str)>,
    usage: &HashMap<CgId, u64>,
) -> u64 {
    let all: Vec<(CgId, &str)> = managed.collect();
    let paths: std::collections::HashSet<&str> = all.iter().map(|(_, p)| *p).collect();
    all.iter()
        .filter(|(_, p)| !super::managed::ancestors(p).any(|a| paths.contains(a)))
        .filter_map(|(id, _)| usage.get(id))
        .fold(0u64, |s, u| s.saturating_add(*u))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_missing_default_path_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = KubeletWatch::new(KubeletSource::Auto(dir.path().join("config.yaml")));
        assert!(!w.poll());
        assert_eq!(w.current(), None);
        assert_eq!(w.errors(), 0);
        let mut w = KubeletWatch::new(KubeletSource::Off);
        assert!(!w.poll());
        assert_eq!(w.current(), None);
    }

    #[test]
    fn a_missing_configured_file_is_an_error_and_the_defaults_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = KubeletWatch::new(KubeletSource::File(dir.path().join("nope.yaml")));
        assert!(w.poll());
        assert_eq!(w.current(), Some(&KubeletMemory::default()));
        assert_eq!(w.errors(), 1);
        assert!(w.error().unwrap().message.contains("does not exist"));
        // Counted once while nothing changes.
        assert!(!w.poll());
        assert_eq!(w.errors(), 1);
    }

    #[test]
    fn a_bad_rewrite_keeps_the_last_good_figures_and_a_fix_is_picked_up() {
        if !root() {
            eprintln!("SKIPPED: the file must be owned by root to be trusted (run as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            &format!("{HEAD}systemReserved: {{memory: 1Gi}}\n"),
        );
        let mut w = KubeletWatch::new(KubeletSource::File(p.clone()));
        assert!(w.poll());
        assert_eq!(w.current().unwrap().system_reserved, 1 << 30);
        assert_eq!(w.path(), Some(p.as_path()));
        write(
            dir.path(),
            &format!("{HEAD}systemReserved: {{memory: lots}}\n"),
        );
        assert!(!w.poll(), "the figures in force do not change");
        assert_eq!(w.current().unwrap().system_reserved, 1 << 30);
        let e = w.error().unwrap();
        assert_eq!(e.key, "systemReserved.memory");
        assert_eq!(w.errors(), 1);
        write(
            dir.path(),
            &format!("{HEAD}systemReserved: {{memory: 2Gi}}\n"),
        );
        assert!(w.poll());
        assert_eq!(w.current().unwrap().system_reserved, 2 << 30);
        assert_eq!(w.error(), None);
        // An auto-detected file that vanishes is an error too: the last figures stay.
        let mut a = KubeletWatch::new(KubeletSource::Auto(p.clone()));
        assert!(a.poll());
        std::fs::remove_file(&p).unwrap();
        assert!(!a.poll());
        assert_eq!(a.current().unwrap().system_reserved, 2 << 30);
        assert!(a
            .error()
            .unwrap()
            .message
            .contains("does not exist any more"));
    }

    #[test]
    fn load_once_reads_or_names_the_problem_without_logging() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("config.yaml");
        assert_eq!(load_once(&KubeletSource::Off), Ok(None));
        assert_eq!(load_once(&KubeletSource::Auto(missing.clone())), Ok(None));
        let e = load_once(&KubeletSource::File(missing)).unwrap_err();
        assert!(e.message.contains("does not exist"), "{e:?}");
        if root() {
            let p = write(
                dir.path(),
                &format!("{HEAD}kubeReserved: {{memory: 512Mi}}\n"),
            );
            let k = load_once(&KubeletSource::File(p.clone())).unwrap().unwrap();
            assert_eq!(k.kube_reserved, 512 << 20);
            write(
                dir.path(),
                &format!("{HEAD}kubeReserved: {{memory: 512MB}}\n"),
            );
            let e = load_once(&KubeletSource::Auto(p)).unwrap_err();
            assert_eq!(e.key, "kubeReserved.memory");
        }
    }

    #[test]
    fn a_file_others_can_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), HEAD);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut w = KubeletWatch::new(KubeletSource::File(p));
        w.poll();
        let e = w.error().unwrap();
        assert!(
            e.message.contains("writable by its group or others") || e.message.contains("not root"),
            "{e:?}"
        );
        assert_eq!(w.current(), Some(&KubeletMemory::default()));
    }

    #[test]
    fn top_level_usage_counts_nested_cgroups_once() {
        let managed = [(1, "/a"), (2, "/a/b"), (3, "/c/d"), (4, "/e")];
        let usage = HashMap::from([(1, 100), (2, 60), (3, 7), (4, 1)]);
        assert_eq!(
            top_level_usage(managed.iter().map(|(i, p)| (*i, *p)), &usage),
            108
        );
    }
}
