//! Fetching and preparing Debian kernels: a private apt configuration per suite, `apt-get
//! download`, `dpkg -x`, the ELF vmlinux out of the vmlinuz, and the 9p modules (decompressed)
//! with their dependencies in load order.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::util;

/// A Debian kernel series the VM tests boot.
#[derive(Debug)]
pub struct Kernel {
    /// Short name (`6.12`).
    pub name: &'static str,
    /// Debian suite that carries it.
    pub suite: &'static str,
    /// Package name prefix after `linux-image-`, up to the varying number.
    pub series: &'static str,
}

/// The kernels `--kernel all` covers.
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "6.1",
        suite: "bookworm",
        series: "6.1.0-",
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
        series: "6.12.",
    },
    Kernel {
        name: "6.18",
        suite: "trixie-backports",
        series: "6.18.",
    },
];

/// The Debian archive and the keyring that signs it.
const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Modules the initramfs needs: the 9p shares, and the scratch disk (ext4 on virtio-blk) that
/// backs the guest's /tmp so page cache there is reclaimable. Their dependencies are added.
/// A leading `?` marks a module that only some kernels have (6.1's ext4 needs the crc32c crypto
/// driver, a module there).
const WANTED_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtio_blk",
    "?crc32c_generic",
    "?crc32c_intel",
    "ext4",
];
/// Written to `prepared`: a prepared kernel is reused only if it was made for the same module
/// list (the format of the cache).
fn prepared_stamp(package: &str) -> String {
    format!("{package}\nmodules: {}\n", WANTED_MODULES.join(" "))
}
/// How long the private package lists stay fresh before `--refresh` is implied.
const LISTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A kernel ready to boot.
#[derive(Debug)]
pub struct Prepared {
    /// Short name (`6.12`).
    pub name: String,
    /// The package it came from.
    pub package: String,
    /// Uncompressed ELF kernel image.
    pub vmlinux: PathBuf,
    /// Decompressed modules, in load order.
    pub modules: Vec<PathBuf>,
}

/// A private apt configuration for one suite, under the cache dir.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(cache: &Path, suite: &str) -> Result<Self> {
        let dir = cache.join("apt").join(suite);
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
            "log",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let d = dir.display();
        fs::write(dir.join("status"), b"")?;
        fs::write(
            dir.join("sources.list"),
            format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"),
        )?;
        fs::write(
            dir.join("apt.conf"),
            format!(
                "Dir::State \"{d}/state\";\nDir::State::status \"{d}/status\";\nDir::Cache \"{d}/cache\";\n\
                 Dir::Etc::SourceList \"{d}/sources.list\";\nDir::Etc::SourceParts \"{d}/sources.list.d\";\n\
                 Dir::Etc::Preferences \"{d}/preferences\";\nDir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
                 Dir::Log \"{d}/log\";\nAPT::Sandbox::User \"root\";\nAcquire::Languages \"none\";\n\
                 APT::Architecture \"amd64\";\nAPT::Architectures {{ \"amd64\"; }};\n"
            ),
        )?;
        Ok(Self { dir })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.dir.join("apt.conf"));
        cmd
    }

    fn lists_fresh(&self) -> bool {
        let lists = self.dir.join("state/lists");
        let Ok(entries) = fs::read_dir(&lists) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with("_Packages")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < LISTS_MAX_AGE)
        })
    }

    fn update(&self) -> Result<()> {
        util::run(self.command("apt-get").args(["update", "-q"]))
            .context("apt-get update (private configuration)")
    }
}

/// Picks the newest package of `series` among `names` (`apt-cache pkgnames` output): the part
/// after `linux-image-<series>` must be a number, optionally followed by `+debNN`, then
/// `-amd64` (no cloud/rt/dbg/unsigned flavours).
pub fn newest_package<'a>(series: &str, names: impl Iterator<Item = &'a str>) -> Option<String> {
    let prefix = format!("linux-image-{series}");
    names
        .filter_map(|name| {
            let rest = name.strip_prefix(&prefix)?.strip_suffix("-amd64")?;
            let (num, suffix) = rest.split_once('+').unwrap_or((rest, ""));
            let n: u64 = num.parse().ok()?;
            let suffix_ok = suffix.is_empty()
                || suffix
                    .strip_prefix("deb")
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            suffix_ok.then(|| (n, name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
}

/// Resolves, downloads and prepares `kernel` under `cache/kernels`, reusing earlier work.
pub fn prepare(kernel: &Kernel, cache: &Path, refresh: bool) -> Result<Prepared> {
    let kernels = cache.join("kernels");
    fs::create_dir_all(&kernels)?;
    let current = kernels.join(format!("{}.current", kernel.name));
    if !refresh {
        if let Ok(package) = fs::read_to_string(&current) {
            if let Ok(prepared) = load_prepared(kernel, &kernels.join(package.trim())) {
                println!(
                    "vm: kernel {} from cache: {}",
                    kernel.name, prepared.package
                );
                return Ok(prepared);
            }
        }
    }
    let apt = PrivateApt::new(cache, kernel.suite)?;
    if refresh || !apt.lists_fresh() {
        apt.update()?;
    }
    let names = util::output(
        apt.command("apt-cache")
            .args(["pkgnames", &format!("linux-image-{}", kernel.series)]),
    )?;
    let package = newest_package(kernel.series, names.lines()).with_context(|| {
        format!(
            "no linux-image-{}*-amd64 package in Debian {}",
            kernel.series, kernel.suite
        )
    })?;
    let dir = kernels.join(&package);
    if let Ok(prepared) = load_prepared(kernel, &dir) {
        fs::write(&current, &package)?;
        return Ok(prepared);
    }
    println!(
        "vm: preparing kernel {} from {} ({})",
        kernel.name, package, kernel.suite
    );
    let _ = fs::remove_dir_all(&dir);
    let download = dir.join("download");
    fs::create_dir_all(&download)?;
    util::run(
        apt.command("apt-get")
            .current_dir(&download)
            .args(["download", "-q", &package]),
    )
    .with_context(|| format!("downloading {package}"))?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
    let root = dir.join("root");
    util::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root)).context("dpkg -x")?;

    let vmlinuz = find_one(&root.join("boot"), "vmlinuz-")?;
    let vmlinux = extract_vmlinux(&fs::read(&vmlinuz)?)
        .with_context(|| format!("extracting vmlinux from {}", vmlinuz.display()))?;
    fs::write(dir.join("vmlinux"), vmlinux)?;

    let moddir = modules_dir(&root)?;
    let order = module_load_order(&moddir, WANTED_MODULES)?;
    let out = dir.join("modules");
    fs::create_dir_all(&out)?;
    let mut names = Vec::new();
    for rel in &order {
        let (name, data) = decompress_module(&moddir.join(rel))?;
        fs::write(out.join(format!("{name}.ko")), data)?;
        names.push(name);
    }
    fs::write(dir.join("modules.load"), names.join("\n") + "\n")?;
    // Keep only what boots: the extracted tree and the .deb are large (70-400 MB).
    fs::remove_dir_all(&root)?;
    fs::remove_dir_all(&download)?;
    fs::write(dir.join("prepared"), prepared_stamp(&package))?;
    fs::write(&current, &package)?;
    load_prepared(kernel, &dir)
}

fn load_prepared(kernel: &Kernel, dir: &Path) -> Result<Prepared> {
    let stamp = fs::read_to_string(dir.join("prepared"))?;
    let package = stamp.lines().next().unwrap_or_default().to_string();
    if stamp != prepared_stamp(&package) {
        bail!("{} was prepared by another version of xtask", dir.display());
    }
    let names = fs::read_to_string(dir.join("modules.load"))?;
    let modules = names
        .lines()
        .filter(|l| !l.is_empty())
        .map(|n| dir.join("modules").join(format!("{n}.ko")))
        .collect();
    let vmlinux = dir.join("vmlinux");
    if !vmlinux.is_file() {
        bail!("{} missing", vmlinux.display());
    }
    Ok(Prepared {
        name: kernel.name.into(),
        package: package.trim().into(),
        vmlinux,
        modules,
    })
}

/// Finds `lib/modules/<release>` in an extracted kernel package and makes sure it has a
/// `modules.dep`: the package does not ship one (its postinst runs depmod), so run
/// `depmod -b` on the extracted tree. Trixie's packages put modules under `usr/lib/modules`,
/// which older depmod does not look in: link `lib/modules` to it.
fn modules_dir(root: &Path) -> Result<PathBuf> {
    let lib_modules = root.join("lib/modules");
    if !lib_modules.exists() && root.join("usr/lib/modules").is_dir() {
        fs::create_dir_all(root.join("lib"))?;
        std::os::unix::fs::symlink("../usr/lib/modules", &lib_modules)
            .with_context(|| format!("linking {}", lib_modules.display()))?;
    }
    let moddir = find_one(&lib_modules, "")?;
    if !moddir.join("modules.dep").is_file() {
        let release = moddir
            .file_name()
            .context("module dir name")?
            .to_string_lossy()
            .into_owned();
        util::run(Command::new("depmod").arg("-b").arg(root).arg(&release))
            .context("depmod (package kmod) on the extracted kernel")?;
    }
    Ok(moddir)
}

fn find_one(dir: &Path, prefix: &str) -> Result<PathBuf> {
    fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("nothing named {prefix}* in {}", dir.display()))
}

/// Compression formats a bzImage payload may use: magic bytes and the decompressor.
const COMPRESSIONS: &[(&[u8], &[&str])] = &[
    (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"]),
    (b"\xfd7zXZ\x00", &["xz", "-dcq"]),
    (b"\x1f\x8b\x08", &["gzip", "-dcq"]),
    (b"\x02\x21\x4c\x18", &["lz4", "-dcq"]),
    (b"BZh", &["bzip2", "-dcq"]),
];

/// Extracts the ELF vmlinux from a compressed kernel image, like the kernel's
/// scripts/extract-vmlinux: try each compression magic at each offset until the decompressed
/// data is an ELF file. Trailing data after the payload makes the tools complain; the output
/// is checked instead of their status.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>> {
    if image.starts_with(b"\x7fELF") {
        return Ok(image.to_vec());
    }
    for (magic, tool) in COMPRESSIONS {
        if util::on_path(tool[0]).is_none() {
            continue;
        }
        for offset in find_all(image, magic).take(8) {
            let out = decompress_with(tool, &image[offset..])?;
            if out.starts_with(b"\x7fELF") {
                return Ok(out);
            }
        }
    }
    bail!("no compressed ELF payload found (tried zstd, xz, gzip, lz4, bzip2)")
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

fn decompress_with(tool: &[&str], data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", tool[0]))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        // The decompressor may stop reading at the end of its stream: ignore EPIPE.
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok(out.stdout)
}

/// Strips `.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz` from a module file name.
pub fn module_name(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
}

/// Resolves `wanted` modules and their dependencies from `modules.dep` (and `modules.builtin`
/// for ones built into the kernel), returning module paths relative to `moddir` in load order.
/// A wanted module that is neither a module nor built in is an error.
pub fn module_load_order(moddir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep = fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    resolve_modules(&dep, &builtin, wanted)
}

/// The pure part of [`module_load_order`].
pub fn resolve_modules(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(name) = module_name(module) else {
            continue;
        };
        let needs = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(name.replace('-', "_"), (module.to_string(), needs));
    }
    let builtin: HashSet<String> = builtin
        .lines()
        .filter_map(module_name)
        .map(|n| n.replace('-', "_"))
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        path: &str,
        by_path: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, (_, needs))) = by_path.iter().find(|(_, (p, _))| p == path) {
            for need in needs {
                visit(need, by_path, seen, order);
            }
        }
        order.push(path.to_string());
    }
    for want in wanted {
        let (want, optional) = match want.strip_prefix('?') {
            Some(w) => (w, true),
            None => (*want, false),
        };
        let key = want.replace('-', "_");
        match deps.get(&key) {
            Some((path, _)) => visit(&path.clone(), &deps, &mut seen, &mut order),
            None if builtin.contains(&key) || optional => {}
            None => bail!("kernel module {want} is neither in modules.dep nor built in"),
        }
    }
    Ok(order)
}

fn decompress_module(path: &Path) -> Result<(String, Vec<u8>)> {
    let s = path.to_string_lossy();
    let name = module_name(&s)
        .with_context(|| format!("not a module: {s}"))?
        .to_string();
    let data = fs::read(path).with_context(|| format!("reading {s}"))?;
    let data = if s.ends_with(".ko") {
        data
    } else {
        let tool: &[&str] = if s.ends_with(".xz") {
            &["xz", "-dcq"]
        } else if s.ends_with(".zst") {
            &["zstd", "-dcq"]
        } else {
            &["gzip", "-dcq"]
        };
        let out = decompress_with(tool, &data)?;
        if !out.starts_with(b"\x7fELF") {
            bail!("decompressing {s} with {} gave no ELF module", tool[0]);
        }
        out
    };
    Ok((name, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_plain_flavour() {
        let names = [
            "linux-image-6.18.5+deb13-amd64",
            "linux-image-6.18.15+deb13-amd64",
            "linux-image-6.18.9+deb13-amd64",
            "linux-image-6.18.15+deb13-cloud-amd64",
            "linux-image-6.18.15+deb13-rt-amd64",
            "linux-image-6.18.15+deb13-amd64-dbg",
        ];
        assert_eq!(
            newest_package("6.18.", names.into_iter()).as_deref(),
            Some("linux-image-6.18.15+deb13-amd64")
        );
        let bookworm = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-50-amd64",
            "linux-image-6.1.0-50-amd64-unsigned",
            "linux-image-6.1.0-50-cloud-amd64",
        ];
        assert_eq!(
            newest_package("6.1.0-", bookworm.into_iter()).as_deref(),
            Some("linux-image-6.1.0-50-amd64")
        );
        assert_eq!(newest_package("6.12.", bookworm.into_iter()), None);
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), Some("9p"));
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko"),
            Some("9pnet_virtio")
        );
        assert_eq!(module_name("kernel/fs/netfs/netfs.ko.zst"), Some("netfs"));
        assert_eq!(module_name("kernel/fs/README"), None);
    }

    #[test]
    fn resolves_dependencies_in_load_order() {
        let dep = "kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\n\
                   kernel/fs/netfs/netfs.ko.xz:\n\
                   kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        let order = resolve_modules(dep, builtin, &["virtio_pci", "9pnet_virtio", "9p"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz"
            ]
        );
        assert!(resolve_modules(dep, "", &["virtio_pci"]).is_err());
        assert_eq!(
            resolve_modules(dep, "", &["?virtio_pci"]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn extracts_gzip_payload() {
        // A fake bzImage: a header, a gzip stream of an "ELF", and trailing bytes.
        let mut elf = b"\x7fELF".to_vec();
        elf.extend(std::iter::repeat_n(7u8, 4096));
        let mut child = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&elf).unwrap();
        let gz = child.wait_with_output().unwrap().stdout;
        let mut image = b"MZ header \x1f\x8b\x08 false magic".to_vec();
        image.extend(&gz);
        image.extend(b"trailing junk");
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
        assert!(extract_vmlinux(b"no payload here").is_err());
    }
}
