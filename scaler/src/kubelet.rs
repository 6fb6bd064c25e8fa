//! The kubelet's memory reservations, read from its configuration file.
//!
//! A raise must never push the node into the kubelet's eviction (pods killed when the node's
//! `memory.available` falls below `evictionHard["memory.available"]`, or below
//! `evictionSoft[...]` for its grace period) nor take what the kubelet promised the system
//! (`kubeReserved` and `systemReserved`: node allocatable is capacity minus these and the
//! hard eviction threshold). Where the agent can read the kubelet's `KubeletConfiguration`
//! (`node.kubelet_config`, by default `/var/lib/kubelet/config.yaml` when it exists), those
//! figures enter the node reserve (see [`crate::node`]).
//!
//! * The file is a `KubeletConfiguration` of `kubelet.config.k8s.io` (v1beta1 today), YAML or
//!   JSON (JSON is YAML 1.2), as the kubelet takes with `--config`
//!   (<https://kubernetes.io/docs/tasks/administer-cluster/kubelet-config-file/>). Only the
//!   memory figures are read; everything else is ignored.
//! * Defaults as the kubelet applies them
//!   (<https://kubernetes.io/docs/concepts/scheduling-eviction/node-pressure-eviction/>): with
//!   no `evictionHard` at all, `memory.available` is `100Mi` on Linux. The defaults "will only
//!   be set if none of the parameters is changed": an `evictionHard` that names other signals
//!   but not `memory.available` leaves it at zero, unless `mergeDefaultEvictionSettings: true`
//!   (then the missing signal takes its default). Reservations default to none, and
//!   `evictionSoft` to none.
//! * Quantities are Kubernetes `resource.Quantity` strings ([`parse_quantity`]), parsed
//!   exactly: binary suffixes `Ki Mi Gi Ti Pi Ei`, decimal `n u m k M G T P E`, exponents
//!   `1e3`, fractions; a fraction of a byte rounds up, as `Quantity.Value()` does. Eviction
//!   thresholds may also be a percentage of capacity (`"5%"`, [`Threshold`]).
//! * Flags given to the kubelet on its command line (`--eviction-hard`, `--system-reserved`)
//!   override the file and cannot be seen here: set `node.memory_reserve` for them.

use std::fmt;

use yaml_rust2::{Yaml, YamlLoader};

use crate::units::MIB;

/// Where the kubelet's configuration is looked for when `node.kubelet_config` is not given
/// (kubeadm's path; used only while the file exists).
pub const DEFAULT_KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";

/// The kubelet's default `evictionHard["memory.available"]` on Linux.
pub const DEFAULT_EVICTION_HARD_MEMORY: u64 = 100 * MIB;

/// The largest kubelet configuration file read (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The `kind` a kubelet configuration file carries.
pub const KIND: &str = "KubeletConfiguration";
/// The API group of its `apiVersion`.
pub const API_GROUP: &str = "kubelet.config.k8s.io/";

/// A string that is not a Kubernetes quantity of bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a Kubernetes quantity: {reason} (e.g. \"512Mi\", \"1Gi\", \"1G\")")]
pub struct QuantityError {
    /// The offending input, verbatim.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn qerr(input: &str, reason: &'static str) -> QuantityError {
    QuantityError {
        input: input.to_owned(),
        reason,
    }
}

/// A decimal number split into its digits: `mantissa * 10^-scale`.
struct Decimal {
    mantissa: u128,
    scale: u32,
}

/// Parses `digits[.digits]` (at least one digit; at most 30 significant ones).
fn parse_decimal<'a>(s: &'a str, input: &str) -> Result<(Decimal, &'a str), QuantityError> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(qerr(input, "no number"));
    }
    if frac.contains('.') {
        return Err(qerr(input, "more than one decimal point"));
    }
    let digits = format!("{int}{frac}");
    let significant = digits.trim_start_matches('0');
    if significant.len() > 30 {
        return Err(qerr(input, "too many digits"));
    }
    let mantissa = if significant.is_empty() {
        0
    } else {
        significant
            .parse::<u128>()
            .map_err(|_| qerr(input, "not a number"))?
    };
    Ok((
        Decimal {
            mantissa,
            scale: frac.len() as u32,
        },
        rest,
    ))
}

/// `mantissa * factor * 10^exp10`, rounded up to a whole number, if it fits in a u64.
fn scaled(mantissa: u128, factor: u128, exp10: i32, input: &str) -> Result<u64, QuantityError> {
    let too_large = || qerr(input, "too large");
    let v = mantissa.checked_mul(factor).ok_or_else(too_large)?;
    let v = if exp10 >= 0 {
        if v == 0 {
            0
        } else {
            let p = 10u128.checked_pow(exp10 as u32).ok_or_else(too_large)?;
            v.checked_mul(p).ok_or_else(too_large)?
        }
    } else {
        match 10u128.checked_pow(exp10.unsigned_abs()) {
            Some(p) => v.div_ceil(p),
            // Below one: a fraction of a byte rounds up.
            None => u128::from(v > 0),
        }
    };
    u64::try_from(v).map_err(|_| too_large())
}

/// Parses a Kubernetes quantity (`resource.Quantity`) as a whole number of bytes, rounded up
/// as `Quantity.Value()` rounds: `"128974848"`, `"129e6"`, `"129M"`, `"123Mi"`, `"1.5Gi"`,
/// `"500m"` (half a byte: 1). Negative quantities are refused (no memory figure is negative).
pub fn parse_quantity(s: &str) -> Result<u64, QuantityError> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.starts_with('-') {
        return Err(qerr(s, "a memory quantity cannot be negative"));
    }
    let (d, suffix) = parse_decimal(t, s)?;
    let scale = -(d.scale as i32);
    let (factor, exp10): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        e if e.starts_with(['e', 'E']) => {
            let x = &e[1..];
            let (neg, digits) = match x.as_bytes().first() {
                Some(b'-') => (true, &x[1..]),
                Some(b'+') => (false, &x[1..]),
                _ => (false, x),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(qerr(s, "an exponent must be a whole number (\"1e3\")"));
            }
            let n: i32 = digits
                .parse()
                .ok()
                .filter(|n| *n <= 64)
                .ok_or_else(|| qerr(s, "exponent out of range"))?;
            (1, if neg { -n } else { n })
        }
        _ => {
            return Err(qerr(
                s,
                "unknown suffix (binary: Ki Mi Gi Ti Pi Ei; decimal: n u m k M G T P E)",
            ))
        }
    };
    scaled(d.mantissa, factor, exp10 + scale, s)
}

/// An eviction threshold: a quantity of bytes, or a percentage of the node's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    Bytes(u64),
    /// `numerator / denominator` of capacity (`7.5%` is 75 / 1000).
    Fraction {
        numerator: u64,
        denominator: u64,
    },
}

impl Threshold {
    /// Parses `"100Mi"` or `"5%"` (a leading `<`, as the flag form and some documentation
    /// write it, is allowed).
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let t = s.trim();
        let t = t.strip_prefix('<').unwrap_or(t).trim_start();
        let Some(pct) = t.strip_suffix('%') else {
            return parse_quantity(t).map(Threshold::Bytes);
        };
        if pct.trim_start().starts_with('-') {
            return Err(qerr(s, "a percentage cannot be negative"));
        }
        let (d, rest) = parse_decimal(pct.trim(), s)?;
        if !rest.is_empty() || d.scale > 9 {
            return Err(qerr(s, "a percentage is a number and % (\"5%\", \"7.5%\")"));
        }
        let denominator = 100 * 10u128.pow(d.scale);
        if d.mantissa > denominator {
            return Err(qerr(s, "a percentage cannot be above 100%"));
        }
        Ok(Threshold::Fraction {
            numerator: d.mantissa as u64,
            denominator: denominator as u64,
        })
    }

    /// The threshold in bytes on a node of `capacity` bytes (a percentage rounds up).
    pub fn bytes(&self, capacity: u64) -> u64 {
        match *self {
            Threshold::Bytes(b) => b,
            Threshold::Fraction {
                numerator,
                denominator,
            } => {
                let v = (u128::from(capacity) * u128::from(numerator))
                    .div_ceil(u128::from(denominator));
                u64::try_from(v).unwrap_or(u64::MAX)
            }
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Threshold::Bytes(b) => f.write_str(&crate::units::format_size(b)),
            Threshold::Fraction {
                numerator,
                denominator,
            } => {
                let scale = (denominator / 100).max(1);
                let digits = scale.ilog10() as usize;
                if digits == 0 {
                    write!(f, "{numerator}%")
                } else {
                    let (i, r) = (numerator / scale, numerator % scale);
                    write!(f, "{i}.{r:0digits$}%")
                }
            }
        }
    }
}

/// Where the hard eviction threshold came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionOrigin {
    /// `evictionHard["memory.available"]` in the file.
    Configured,
    /// No `evictionHard` (or `mergeDefaultEvictionSettings`): the kubelet's default, 100Mi.
    Default,
    /// An `evictionHard` without `memory.available`: the kubelet sets it to zero.
    Zero,
}

impl EvictionOrigin {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::Default => "default",
            Self::Zero => "unset",
        }
    }
}

/// The memory figures of a kubelet configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletMemory {
    /// `kubeReserved.memory` (bytes; 0 when unset).
    pub kube_reserved: u64,
    /// `systemReserved.memory` (bytes; 0 when unset).
    pub system_reserved: u64,
    /// `evictionHard["memory.available"]`, the kubelet's default applied.
    pub eviction_hard: Threshold,
    pub eviction_hard_origin: EvictionOrigin,
    /// `evictionSoft["memory.available"]` (no default).
    pub eviction_soft: Option<Threshold>,
    /// `enforceNodeAllocatable` (the kubelet's default: `["pods"]`).
    pub enforce_node_allocatable: Vec<String>,
}

impl Default for KubeletMemory {
    /// What the kubelet runs with when its file sets nothing: no reservations, a hard eviction
    /// threshold of 100Mi, node allocatable enforced on pods.
    fn default() -> Self {
        Self {
            kube_reserved: 0,
            system_reserved: 0,
            eviction_hard: Threshold::Bytes(DEFAULT_EVICTION_HARD_MEMORY),
            eviction_hard_origin: EvictionOrigin::Default,
            eviction_soft: None,
            enforce_node_allocatable: vec!["pods".to_owned()],
        }
    }
}

impl KubeletMemory {
    /// The eviction threshold a raise must stay above on a node of `capacity` bytes: the
    /// larger of the hard and soft `memory.available` thresholds (soft eviction only waits for
    /// its grace period).
    pub fn eviction_threshold(&self, capacity: u64) -> u64 {
        let hard = self.eviction_hard.bytes(capacity);
        self.eviction_soft
            .map_or(hard, |s| s.bytes(capacity).max(hard))
    }

    /// `kubeReserved.memory + systemReserved.memory`.
    pub fn reserved(&self) -> u64 {
        self.kube_reserved.saturating_add(self.system_reserved)
    }

    /// Node allocatable memory on a node of `capacity` bytes, as the kubelet computes it:
    /// capacity minus kube-reserved, system-reserved and the hard eviction threshold.
    pub fn allocatable(&self, capacity: u64) -> u64 {
        capacity
            .saturating_sub(self.reserved())
            .saturating_sub(self.eviction_hard.bytes(capacity))
    }

    /// One line naming each figure, for logs.
    pub fn describe(&self) -> String {
        let soft = self
            .eviction_soft
            .map_or_else(|| "unset".to_owned(), |s| s.to_string());
        format!(
            "kubeReserved.memory {}, systemReserved.memory {}, evictionHard[memory.available] \
             {} ({}), evictionSoft[memory.available] {soft}",
            crate::units::format_size(self.kube_reserved),
            crate::units::format_size(self.system_reserved),
            self.eviction_hard,
            self.eviction_hard_origin.as_str(),
        )
    }
}

/// A kubelet configuration the agent cannot use: the key at fault and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct KubeletConfigError {
    /// The key, dotted (`evictionHard[memory.available]`), or `(file)` for the whole file.
    pub key: String,
    pub message: String,
}

fn cerr(key: impl Into<String>, message: impl Into<String>) -> KubeletConfigError {
    KubeletConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// A scalar as the text of a quantity (`1Gi`, `1073741824`, `1.5e9`); `None` for null.
fn scalar(v: &Yaml, key: &str) -> Result<Option<String>, KubeletConfigError> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Ok(Some(s.clone())),
        Yaml::Integer(i) => Ok(Some(i.to_string())),
        Yaml::Null | Yaml::BadValue => Ok(None),
        _ => Err(cerr(key, "must be a quantity such as \"1Gi\"")),
    }
}

/// A map field (`kubeReserved`, `evictionHard`): `None` when absent or null.
fn map<'a>(
    doc: &'a yaml_rust2::yaml::Hash,
    key: &str,
) -> Result<Option<&'a yaml_rust2::yaml::Hash>, KubeletConfigError> {
    match doc.get(&Yaml::String(key.to_owned())) {
        None | Some(Yaml::Null) => Ok(None),
        Some(Yaml::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(cerr(
            key,
            "must be a map of names to quantities (e.g. `memory: 1Gi`)",
        )),
    }
}

fn entry<'a>(h: &'a yaml_rust2::yaml::Hash, name: &str) -> Option<&'a Yaml> {
    h.get(&Yaml::String(name.to_owned()))
}

fn reservation(doc: &yaml_rust2::yaml::Hash, field: &str) -> Result<u64, KubeletConfigError> {
    let Some(h) = map(doc, field)? else {
        return Ok(0);
    };
    let key = format!("{field}.memory");
    match entry(h, "memory") {
        None => Ok(0),
        Some(v) => match scalar(v, &key)? {
            None => Ok(0),
            Some(s) => parse_quantity(&s).map_err(|e| cerr(key, e.to_string())),
        },
    }
}

fn threshold(
    h: &yaml_rust2::yaml::Hash,
    field: &str,
) -> Result<Option<Threshold>, KubeletConfigError> {
    let key = format!("{field}[memory.available]");
    match entry(h, "memory.available") {
        None => Ok(None),
        Some(v) => match scalar(v, &key)? {
            None => Ok(None),
            Some(s) => Threshold::parse(&s)
                .map(Some)
                .map_err(|e| cerr(key, e.to_string())),
        },
    }
}

/// Reads the memory figures of a `KubeletConfiguration` (YAML or JSON text).
pub fn parse_config(text: &str) -> Result<KubeletMemory, KubeletConfigError> {
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| cerr("(file)", format!("not valid YAML or JSON: {e}")))?;
    let doc = match docs.as_slice() {
        [] => return Err(cerr("(file)", "is empty")),
        [d] => d,
        more => {
            return Err(cerr(
                "(file)",
                format!("holds {} YAML documents; the kubelet reads one", more.len()),
            ))
        }
    };
    let Yaml::Hash(doc) = doc else {
        return Err(cerr("(file)", "is not a map of settings"));
    };
    match doc.get(&Yaml::String("kind".into())).and_then(Yaml::as_str) {
        Some(KIND) => {}
        Some(k) => return Err(cerr("kind", format!("is {k:?}, not {KIND:?}"))),
        None => {
            return Err(cerr(
                "kind",
                format!("missing: not a kubelet configuration (kind: {KIND})"),
            ))
        }
    }
    match doc
        .get(&Yaml::String("apiVersion".into()))
        .and_then(Yaml::as_str)
    {
        Some(v) if v.starts_with(API_GROUP) => {}
        Some(v) => {
            return Err(cerr(
                "apiVersion",
                format!("is {v:?}, not {API_GROUP}v1beta1 (or another version of that group)"),
            ))
        }
        None => return Err(cerr("apiVersion", format!("missing ({API_GROUP}v1beta1)"))),
    }
    let merge = match doc.get(&Yaml::String("mergeDefaultEvictionSettings".into())) {
        None | Some(Yaml::Null) => false,
        Some(Yaml::Boolean(b)) => *b,
        Some(_) => {
            return Err(cerr(
                "mergeDefaultEvictionSettings",
                "must be true or false",
            ))
        }
    };
    let kube_reserved = reservation(doc, "kubeReserved")?;
    let system_reserved = reservation(doc, "systemReserved")?;
    let (eviction_hard, eviction_hard_origin) = match map(doc, "evictionHard")? {
        None => (
            Threshold::Bytes(DEFAULT_EVICTION_HARD_MEMORY),
            EvictionOrigin::Default,
        ),
        Some(h) => match threshold(h, "evictionHard")? {
            Some(t) => (t, EvictionOrigin::Configured),
            None if merge => (
                Threshold::Bytes(DEFAULT_EVICTION_HARD_MEMORY),
                EvictionOrigin::Default,
            ),
            None => (Threshold::Bytes(0), EvictionOrigin::Zero),
        },
    };
    let eviction_soft = match map(doc, "evictionSoft")? {
        None => None,
        Some(h) => threshold(h, "evictionSoft")?,
    };
    let enforce_node_allocatable = match doc.get(&Yaml::String("enforceNodeAllocatable".into())) {
        None | Some(Yaml::Null) => vec!["pods".to_owned()],
        Some(Yaml::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| cerr("enforceNodeAllocatable", "must be a list of names"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(cerr(
                "enforceNodeAllocatable",
                "must be a list of names (e.g. [pods])",
            ))
        }
    };
    Ok(KubeletMemory {
        kube_reserved,
        system_reserved,
        eviction_hard,
        eviction_hard_origin,
        eviction_soft,
        enforce_node_allocatable,
    })
}

#[cfg(test)]
mod tests;
