//! Human-readable quantities: memory sizes, CPU amounts in cores, and durations.
//!
//! * **Sizes** ([`parse_bytes`], [`ByteSize`]): a number with an optional suffix. `K`, `M`, `G`
//!   and `T` are **binary** multiples (1024, 1024², 1024³, 1024⁴), whether written `M`, `MB`,
//!   `MiB` or lower case: this is what `memory.limit_in_bytes`, docker and systemd accept, and a
//!   memory limit is never meant in powers of ten. A plain number (or a `B` suffix) is bytes.
//!   Fractions are allowed with a suffix (`1.5G`) and rounded down to whole bytes.
//! * **Cores** ([`parse_cores`], [`Cores`]): `"1.5"` or `1.5` (cores), `"200m"` (millicores,
//!   as in Kubernetes).
//! * **Durations** ([`parse_duration`], [`HumanDuration`]): a number and a unit, one of `ns`,
//!   `us` (or `µs`), `ms`, `s`, `m`, `h`: `"500ms"`, `"30s"`, `"2m"`, `"1.5s"`. A bare `0` is
//!   accepted; any other number needs a unit.
//!
//! The newtypes deserialize from either form TOML allows (a string or a number) and serialize
//! back to the canonical string, so configuration fields read naturally.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 1 TiB.
pub const TIB: u64 = 1 << 40;

/// What kind of quantity failed to parse (for error messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    Size,
    Cores,
    Duration,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Size => "size",
            Self::Cores => "CPU amount",
            Self::Duration => "duration",
        })
    }
}

/// A string that is not a valid size, CPU amount or duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {quantity} {input:?}: {reason}")]
pub struct UnitError {
    /// What was being parsed.
    pub quantity: Quantity,
    /// The offending input, verbatim.
    pub input: String,
    /// Why it was rejected, with the expected form.
    pub reason: &'static str,
}

impl UnitError {
    fn new(quantity: Quantity, input: &str, reason: &'static str) -> Self {
        Self {
            quantity,
            input: input.to_owned(),
            reason,
        }
    }
}

/// Splits `"1.5GiB"` into `("1.5", "GiB")`: the number is the leading run of digits and dots.
fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// A decimal number with an optional fraction, as integer part and fraction digits.
struct Decimal<'a> {
    int: u64,
    frac: &'a str,
}

fn parse_decimal<'a>(num: &'a str, q: Quantity, input: &str) -> Result<Decimal<'a>, UnitError> {
    if num.is_empty() {
        return Err(UnitError::new(q, input, "expected a number first"));
    }
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac.contains('.') {
        return Err(UnitError::new(q, input, "more than one decimal point"));
    }
    if int.is_empty() && frac.is_empty() {
        return Err(UnitError::new(q, input, "expected a number first"));
    }
    if frac.len() > 9 {
        return Err(UnitError::new(q, input, "more than 9 decimal places"));
    }
    let int = if int.is_empty() {
        0
    } else {
        int.parse::<u64>()
            .map_err(|_| UnitError::new(q, input, "number too large"))?
    };
    Ok(Decimal { int, frac })
}

impl Decimal<'_> {
    /// `self * mult`, rounded down; `None` on overflow.
    fn times(&self, mult: u64) -> Option<u64> {
        let whole = self.int.checked_mul(mult)?;
        if self.frac.is_empty() {
            return Some(whole);
        }
        let digits = self.frac.len() as u32;
        let frac: u128 = self.frac.parse().ok()?;
        let part = frac * mult as u128 / 10u128.pow(digits);
        whole.checked_add(u64::try_from(part).ok()?)
    }

    fn is_integral(&self) -> bool {
        self.frac.bytes().all(|b| b == b'0')
    }
}

/// Parses a size: `"64M"`, `"64MiB"`, `"2G"`, `"1.5G"`, `"512k"`, `"4096"`. See the module docs.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let q = Quantity::Size;
    let t = s.trim();
    if t.starts_with('-') {
        return Err(UnitError::new(q, s, "sizes cannot be negative"));
    }
    let (num, suffix) = split_number(t);
    let d = parse_decimal(num, q, s)?;
    let mult = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => {
            return Err(UnitError::new(
                q,
                s,
                "unknown unit; use bytes or K, M, G, T (binary: 1K = 1024 bytes)",
            ))
        }
    };
    if mult == 1 && !d.is_integral() {
        return Err(UnitError::new(
            q,
            s,
            "a plain byte count must be a whole number",
        ));
    }
    d.times(mult)
        .ok_or_else(|| UnitError::new(q, s, "too large for 64 bits"))
}

/// Formats a size in the largest binary unit that keeps it readable: whole multiples print
/// exactly (`"64MiB"`), others with up to two decimals (`"1.5GiB"`); below 1 KiB, bytes (`"512B"`).
/// [`parse_bytes`] reads every output back (approximately, for rounded fractions).
pub fn format_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (mult, name) in UNITS {
        if b >= mult {
            if b.is_multiple_of(mult) {
                return format!("{}{name}", b / mult);
            }
            let v = b as f64 / mult as f64;
            let s = format!("{v:.2}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s}{name}");
        }
    }
    format!("{b}B")
}

/// Alias of [`parse_bytes`] (the name the CLI uses for `--memory SIZE`).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    parse_bytes(s)
}

/// Alias of [`format_bytes`].
pub fn format_size(b: u64) -> String {
    format_bytes(b)
}

/// Largest CPU amount accepted (cores): far above any machine, small enough for exact math.
pub const MAX_CORES: f64 = 1_000_000.0;

/// Parses a CPU amount in cores: `"0.2"`, `"1.5"`, `"2"`, or millicores `"200m"`.
pub fn parse_cores(s: &str) -> Result<f64, UnitError> {
    let q = Quantity::Cores;
    let t = s.trim();
    if t.starts_with('-') {
        return Err(UnitError::new(q, s, "CPU amounts cannot be negative"));
    }
    let (num, suffix) = split_number(t);
    let d = parse_decimal(num, q, s)?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1000.0,
        _ => {
            return Err(UnitError::new(
                q,
                s,
                "unknown unit; use cores (\"1.5\") or millicores (\"200m\")",
            ))
        }
    };
    // Exact enough: at most 9 fraction digits, integers far below 2^53.
    let nanos = d
        .times(1_000_000_000)
        .ok_or_else(|| UnitError::new(q, s, "too large"))?;
    let cores = nanos as f64 / 1e9 / scale;
    check_cores(cores).map_err(|reason| UnitError::new(q, s, reason))
}

fn check_cores(c: f64) -> Result<f64, &'static str> {
    if !c.is_finite() || c < 0.0 {
        Err("must be a finite, non-negative number of cores")
    } else if c > MAX_CORES {
        Err("too large (more than a million cores)")
    } else {
        Ok(c)
    }
}

/// Formats cores compactly: `"1.5"`, `"0.2"`, `"2"` (at most 3 decimals: millicore precision).
pub fn format_cores(c: f64) -> String {
    let s = format!("{c:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Parses a duration: `"500ms"`, `"30s"`, `"2m"`, `"1h"`, `"250us"`, `"1.5s"`, or `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let q = Quantity::Duration;
    let t = s.trim();
    if t.starts_with('-') {
        return Err(UnitError::new(q, s, "durations cannot be negative"));
    }
    let (num, suffix) = split_number(t);
    let d = parse_decimal(num, q, s)?;
    let ns_per_unit: u64 = match suffix {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" if d.int == 0 && d.is_integral() => 1,
        "" => {
            return Err(UnitError::new(
                q,
                s,
                "missing unit; write e.g. \"500ms\", \"30s\" or \"2m\"",
            ))
        }
        _ => {
            return Err(UnitError::new(
                q,
                s,
                "unknown unit; use ns, us, ms, s, m or h (e.g. \"30s\")",
            ))
        }
    };
    let ns = d
        .times(ns_per_unit)
        .ok_or_else(|| UnitError::new(q, s, "too long"))?;
    Ok(Duration::from_nanos(ns))
}

/// Formats a duration in the largest unit that divides it exactly: `"30s"`, `"500ms"`, `"2m"`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if ns == 0 {
        return "0s".to_owned();
    }
    for (mult, name) in UNITS {
        if ns.is_multiple_of(mult) {
            return format!("{}{name}", ns / mult);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

/// A size in bytes that (de)serializes as `"64MiB"`-style strings or plain integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n * MIB)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        Self(n * GIB)
    }
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

impl std::str::FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        parse_bytes(s).map(Self)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(KIB) {
            s.serialize_str(&format_bytes(self.0))
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64M\", \"1.5G\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: sizes cannot be negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "invalid size {v}: a plain byte count must be a whole number \
                     (write fractions with a unit, e.g. \"1.5G\")"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A CPU amount in cores that (de)serializes as a number (`1.5`) or a string (`"200m"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Cores(pub f64);

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_cores(self.0))
    }
}

impl std::str::FromStr for Cores {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        parse_cores(s).map(Self)
    }
}

impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cores;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU amount such as 1.5, \"0.2\" or \"200m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cores, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cores, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cores, E> {
                check_cores(v)
                    .map(Cores)
                    .map_err(|reason| E::custom(format!("invalid CPU amount {v}: {reason}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cores, E> {
                parse_cores(v).map(Cores).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration that (de)serializes as `"500ms"`, `"30s"`, `"2m"` (see [`parse_duration`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }
    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }
    /// The duration in nanoseconds, saturating at `u64::MAX` (584 years).
    pub fn as_nanos_u64(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        parse_duration(s).map(Self)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"30s\" or \"2m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: missing unit; write e.g. \"{v}s\" or \"{v}ms\""
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!(
                        "invalid duration {v}: durations cannot be negative"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_multiples() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("4096B").unwrap(), 4096);
        assert_eq!(parse_bytes("512k").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("64M").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64mb").unwrap(), 64 << 20);
        assert_eq!(parse_bytes(" 2G ").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("0.5 GiB").unwrap(), 1 << 29);
        assert_eq!(parse_bytes("1T").unwrap(), 1 << 40);
        assert_eq!(parse_bytes(".5K").unwrap(), 512);
        assert_eq!(parse_bytes("0").unwrap(), 0);
        // Rounded down to whole bytes.
        assert_eq!(parse_bytes("0.001K").unwrap(), 1);
        assert_eq!(parse_bytes("16777215T").unwrap(), 16_777_215 << 40);
    }

    #[test]
    fn sizes_reject_bad_input_with_the_reason() {
        for (input, why) in [
            ("", "expected a number"),
            ("M", "expected a number"),
            ("-1M", "negative"),
            ("12Q", "unknown unit"),
            ("1.5", "whole number"),
            ("1.2.3M", "decimal point"),
            ("16777216T", "too large"),
            ("99999999999999999999", "too large"),
            ("1.0000000001G", "decimal places"),
            ("64 M B", "unknown unit"),
        ] {
            let err = parse_bytes(input).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(why), "{input:?}: {msg}");
            assert!(msg.contains(&format!("{input:?}")), "{msg} names the input");
            assert_eq!(err.quantity, Quantity::Size);
        }
    }

    #[test]
    fn sizes_format_and_round_trip() {
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(3 << 29), "1.5GiB");
        assert_eq!(format_bytes(1 << 40), "1TiB");
        assert_eq!(format_bytes(1025), "1KiB");
        for b in [0, 1, 1023, 4096, 64 << 20, 3 << 29, 7 << 40] {
            assert_eq!(parse_bytes(&format_bytes(b)).unwrap(), b);
        }
    }

    #[test]
    fn cores_parse() {
        assert_eq!(parse_cores("0.2").unwrap(), 0.2);
        assert_eq!(parse_cores("1.5").unwrap(), 1.5);
        assert_eq!(parse_cores("2").unwrap(), 2.0);
        assert_eq!(parse_cores("200m").unwrap(), 0.2);
        assert_eq!(parse_cores("1500m").unwrap(), 1.5);
        assert_eq!(format_cores(0.2), "0.2");
        assert_eq!(format_cores(2.0), "2");
        assert_eq!(format_cores(1.25), "1.25");
        for (input, why) in [
            ("", "expected a number"),
            ("-1", "negative"),
            ("1.5c", "unknown unit"),
            ("2000000", "too large"),
            ("abc", "expected a number"),
        ] {
            let msg = parse_cores(input).unwrap_err().to_string();
            assert!(msg.contains(why), "{input:?}: {msg}");
            assert!(msg.starts_with("invalid CPU amount"), "{msg}");
        }
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("250µs").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for (input, why) in [
            ("30", "missing unit"),
            ("5d", "unknown unit"),
            ("-1s", "negative"),
            ("s", "expected a number"),
        ] {
            let msg = parse_duration(input).unwrap_err().to_string();
            assert!(msg.contains(why), "{input:?}: {msg}");
            assert!(msg.starts_with("invalid duration"), "{msg}");
        }
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Sample {
        size: ByteSize,
        cores: Cores,
        wait: HumanDuration,
    }

    #[test]
    fn serde_accepts_strings_and_numbers() {
        let a: Sample = toml::from_str("size = \"64M\"\ncores = \"200m\"\nwait = \"30s\"").unwrap();
        assert_eq!(a.size, ByteSize::mib(64));
        assert_eq!(a.cores, Cores(0.2));
        assert_eq!(a.wait, HumanDuration::secs(30));
        let b: Sample = toml::from_str("size = 4096\ncores = 2\nwait = 0").unwrap();
        assert_eq!(b.size, ByteSize(4096));
        assert_eq!(b.cores, Cores(2.0));
        let c: Sample = toml::from_str("size = 4096\ncores = 1.5\nwait = \"1m\"").unwrap();
        assert_eq!(c.cores, Cores(1.5));
        // Round trip through the canonical strings.
        let text = toml::to_string(&a).unwrap();
        assert_eq!(toml::from_str::<Sample>(&text).unwrap(), a);
    }

    #[test]
    fn serde_errors_name_the_input() {
        let err = toml::from_str::<Sample>("size = \"64Q\"\ncores = 1\nwait = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid size \"64Q\""), "{err}");
        let err = toml::from_str::<Sample>("size = -5\ncores = 1\nwait = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be negative"), "{err}");
        let err = toml::from_str::<Sample>("size = 1\ncores = -1\nwait = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid CPU amount"), "{err}");
        let err = toml::from_str::<Sample>("size = 1\ncores = 1\nwait = 30")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing unit"), "{err}");
    }
}
