//! Prompt discovery of new and removed cgroups: inotify on every directory of the cgroupfs
//! tree (`IN_CREATE`/`IN_DELETE` of subdirectories), with watches added recursively as
//! directories appear. The periodic rescan stays as the safety net (a full inotify queue, or
//! `fs.inotify.max_user_watches` reached on a host with very many cgroups).

use std::{
    collections::HashMap,
    ffi::OsStr,
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

/// What the watcher saw, in terms the agent acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeChange {
    /// A cgroup directory appeared (absolute directory path).
    Created(PathBuf),
    /// A cgroup directory was removed.
    Removed(PathBuf),
    /// Events were lost (queue overflow): rescan everything.
    Overflow,
}

/// Recursive inotify watches on a cgroupfs tree.
pub struct TreeWatcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Set once `add_watch` failed for lack of watches (logged once).
    exhausted: bool,
}

const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_ONLYDIR)
    .union(AddWatchFlags::IN_DONT_FOLLOW);

impl TreeWatcher {
    /// Watches `root` and every directory below it.
    pub fn new(root: &Path) -> nix::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
        let mut w = Self {
            inotify,
            dirs: HashMap::new(),
            exhausted: false,
        };
        w.inotify
            .add_watch(root, MASK)
            .map(|wd| w.dirs.insert(wd, root.to_owned()))?;
        w.add_children(root);
        Ok(w)
    }

    /// Number of directories watched.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// True if nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    fn add_tree(&mut self, dir: &Path) {
        match self.inotify.add_watch(dir, MASK) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_owned());
            }
            // Gone already, or not a directory: nothing to watch.
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return,
            Err(e) => {
                if !self.exhausted {
                    self.exhausted = true;
                    tracing::warn!(
                        dir = %dir.display(),
                        "inotify watch not added ({e}); raise fs.inotify.max_user_watches, new cgroups below it are found by the periodic rescan only"
                    );
                }
                return;
            }
        }
        self.add_children(dir);
    }

    fn add_children(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.add_tree(&e.path());
            }
        }
    }

    /// Blocks until events arrive; returns the changes (new directories are watched, with
    /// their subdirectories, before this returns).
    pub fn wait(&mut self) -> nix::Result<Vec<TreeChange>> {
        let events = self.inotify.read_events()?;
        let mut out = Vec::new();
        for ev in events {
            self.apply(ev, &mut out);
        }
        Ok(out)
    }

    fn apply(&mut self, ev: InotifyEvent, out: &mut Vec<TreeChange>) {
        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            out.push(TreeChange::Overflow);
            return;
        }
        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&ev.wd);
            return;
        }
        let Some(parent) = self.dirs.get(&ev.wd) else {
            return;
        };
        let Some(change) = classify(ev.mask, parent, ev.name.as_deref()) else {
            return;
        };
        if let TreeChange::Created(dir) = &change {
            let dir = dir.clone();
            self.add_tree(&dir);
        }
        out.push(change);
    }
}

/// The change an event on a watched `parent` directory means, if any (only subdirectories
/// matter: cgroupfs files are created with their cgroup).
pub fn classify(mask: AddWatchFlags, parent: &Path, name: Option<&OsStr>) -> Option<TreeChange> {
    if !mask.contains(AddWatchFlags::IN_ISDIR) {
        return None;
    }
    let dir = parent.join(name?);
    if mask.contains(AddWatchFlags::IN_CREATE) {
        Some(TreeChange::Created(dir))
    } else if mask.contains(AddWatchFlags::IN_DELETE) {
        Some(TreeChange::Removed(dir))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn classify_only_directories() {
        let p = Path::new("/sys/fs/cgroup/memory/a");
        let n = Some(OsStr::new("b"));
        assert_eq!(
            classify(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ISDIR, p, n),
            Some(TreeChange::Created(p.join("b")))
        );
        assert_eq!(
            classify(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ISDIR, p, n),
            Some(TreeChange::Removed(p.join("b")))
        );
        assert_eq!(classify(AddWatchFlags::IN_CREATE, p, n), None, "a file");
        assert_eq!(
            classify(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ISDIR, p, None),
            None
        );
    }

    /// Waits for changes with a deadline (the watcher blocks, so it runs on a thread).
    fn collect(mut w: TreeWatcher, want: usize) -> (TreeWatcher, Vec<TreeChange>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < want {
                got.extend(w.wait().unwrap());
            }
            tx.send(()).unwrap();
            (w, got)
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("inotify events within 5 s");
        h.join().unwrap()
    }

    #[test]
    fn new_directories_are_watched_recursively_on_a_plain_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("pre/existing")).unwrap();
        let w = TreeWatcher::new(d.path()).unwrap();
        assert_eq!(w.len(), 3);
        let start = Instant::now();
        std::fs::create_dir(d.path().join("pre/existing/new")).unwrap();
        std::fs::write(d.path().join("pre/file"), "x").unwrap();
        let (w, got) = collect(w, 1);
        assert_eq!(
            got,
            [TreeChange::Created(d.path().join("pre/existing/new"))]
        );
        assert_eq!(w.len(), 4);
        // The new directory is itself watched.
        std::fs::create_dir(d.path().join("pre/existing/new/deeper")).unwrap();
        let (w, got) = collect(w, 1);
        assert_eq!(
            got,
            [TreeChange::Created(
                d.path().join("pre/existing/new/deeper")
            )]
        );
        std::fs::remove_dir(d.path().join("pre/existing/new/deeper")).unwrap();
        let (_w, got) = collect(w, 1);
        assert_eq!(
            got[0],
            TreeChange::Removed(d.path().join("pre/existing/new/deeper"))
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
