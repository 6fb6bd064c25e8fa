use super::*;
use crate::units::GIB;

#[test]
fn quantities_are_parsed_exactly() {
    let ok = [
        ("0", 0),
        ("1", 1),
        ("128974848", 128_974_848),
        // The four spellings of about 129 MB in the Kubernetes documentation.
        ("129e6", 129_000_000),
        ("129M", 129_000_000),
        ("123Mi", 123 * MIB),
        ("1Ki", 1024),
        ("100Mi", 100 * MIB),
        ("1Gi", GIB),
        ("1.5Gi", 3 * GIB / 2),
        ("2Ti", 2 << 40),
        ("1Pi", 1 << 50),
        ("1Ei", 1 << 60),
        ("1k", 1000),
        ("1G", 1_000_000_000),
        ("1T", 1_000_000_000_000),
        ("1P", 1_000_000_000_000_000),
        ("1E", 1_000_000_000_000_000_000),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1.5e9", 1_500_000_000),
        ("12E-1", 2),
        ("+5Mi", 5 * MIB),
        ("0.5", 1),
        (".5Ki", 512),
        ("500m", 1),
        ("1000m", 1),
        ("1001m", 2),
        ("3000000n", 1),
        ("0m", 0),
        (" 64Mi ", 64 * MIB),
        ("0.1Ki", 103),
        ("1e-3", 1),
        ("000001Mi", MIB),
    ];
    for (s, want) in ok {
        assert_eq!(parse_quantity(s), Ok(want), "{s}");
    }
    let bad = [
        ("", "no number"),
        ("Mi", "no number"),
        ("-1Mi", "negative"),
        ("1.2.3", "more than one decimal point"),
        ("1MB", "unknown suffix"),
        ("1mi", "unknown suffix"),
        ("1 Gi", "unknown suffix"),
        ("1e", "exponent"),
        ("1e+", "exponent"),
        ("1e99", "out of range"),
        ("16Ei", "too large"),
        ("20E", "too large"),
        ("1111111111111111111111111111111", "too many digits"),
        ("ten", "no number"),
    ];
    for (s, why) in bad {
        let e = parse_quantity(s).unwrap_err();
        assert!(e.to_string().contains(why), "{s}: {e}");
        assert!(e.to_string().contains(&format!("{s:?}")), "{s}: {e}");
    }
}

#[test]
fn thresholds_are_quantities_or_percentages_of_capacity() {
    assert_eq!(Threshold::parse("100Mi"), Ok(Threshold::Bytes(100 * MIB)));
    assert_eq!(Threshold::parse("<500Mi"), Ok(Threshold::Bytes(500 * MIB)));
    let t = Threshold::parse("10%").unwrap();
    assert_eq!(t.bytes(10 * GIB), GIB);
    assert_eq!(t.to_string(), "10%");
    let t = Threshold::parse("7.5%").unwrap();
    assert_eq!(t.bytes(1000), 75);
    assert_eq!(t.to_string(), "7.5%");
    // Rounded up (toward more reserve).
    assert_eq!(Threshold::parse("1%").unwrap().bytes(1001), 11);
    assert_eq!(Threshold::parse("100%").unwrap().bytes(5), 5);
    assert_eq!(Threshold::parse("0%").unwrap().bytes(5), 0);
    for (s, why) in [
        ("101%", "above 100%"),
        ("-5%", "negative"),
        ("5x%", "number and %"),
        ("%", "no number"),
        ("five%", "no number"),
    ] {
        let e = Threshold::parse(s).unwrap_err();
        assert!(e.to_string().contains(why), "{s}: {e}");
    }
}

/// The example of "Set Kubelet Parameters Via A Configuration File" (kubernetes.io).
const DOCS_CONFIG_FILE: &str = r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "192.168.0.8"
port: 20250
serializeImagePulls: false
evictionHard:
    memory.available:  "100Mi"
    nodefs.available:  "10%"
    nodefs.inodesFree: "5%"
    imagefs.available: "15%"
    imagefs.inodesFree: "5%"
"#;

#[test]
fn the_documented_configuration_file_example_is_read() {
    let k = parse_config(DOCS_CONFIG_FILE).unwrap();
    assert_eq!(k.eviction_hard, Threshold::Bytes(100 * MIB));
    assert_eq!(k.eviction_hard_origin, EvictionOrigin::Configured);
    assert_eq!((k.kube_reserved, k.system_reserved), (0, 0));
    assert_eq!(k.eviction_soft, None);
    assert_eq!(k.enforce_node_allocatable, ["pods"]);
}

#[test]
fn the_documented_allocatable_example_gives_28_5_gi() {
    // "Reserve Compute Resources for System Daemons", Example Scenario: 32Gi of memory,
    // kubeReserved {cpu: 1000m, memory: 2Gi, ephemeral-storage: 1Gi}, systemReserved
    // {cpu: 500m, memory: 1Gi, ephemeral-storage: 1Gi}, evictionHard {memory.available:
    // "<500Mi", nodefs.available: "<10%"}: allocatable memory is "28.5Gi" (29Gi - 500Mi,
    // which the page rounds).
    let text = r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
kubeReserved: {cpu: 1000m, memory: 2Gi, ephemeral-storage: 1Gi}
systemReserved: {cpu: 500m, memory: 1Gi, ephemeral-storage: 1Gi}
evictionHard: {memory.available: "<500Mi", nodefs.available: "<10%"}
enforceNodeAllocatable: [pods, kube-reserved, system-reserved]
kubeReservedCgroup: /kube.slice
systemReservedCgroup: /system.slice
"#;
    let k = parse_config(text).unwrap();
    assert_eq!(k.kube_reserved, 2 * GIB);
    assert_eq!(k.system_reserved, GIB);
    assert_eq!(k.reserved(), 3 * GIB);
    assert_eq!(k.allocatable(32 * GIB), 29 * GIB - 500 * MIB);
    assert_eq!(k.eviction_threshold(32 * GIB), 500 * MIB);
    assert_eq!(
        k.enforce_node_allocatable,
        ["pods", "kube-reserved", "system-reserved"]
    );
}

#[test]
fn the_documented_minimum_reclaim_example_and_soft_thresholds_are_read() {
    // "Node-pressure Eviction", Minimum eviction reclaim.
    let text = r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
evictionHard:
  memory.available: "500Mi"
  nodefs.available: "1Gi"
  imagefs.available: "100Gi"
evictionMinimumReclaim:
  memory.available: "0Mi"
  nodefs.available: "500Mi"
  imagefs.available: "2Gi"
evictionSoft:
  memory.available: "10%"
evictionSoftGracePeriod:
  memory.available: "1m30s"
"#;
    let k = parse_config(text).unwrap();
    assert_eq!(k.eviction_hard, Threshold::Bytes(500 * MIB));
    // The soft threshold is the higher one here: a raise stays above it.
    assert_eq!(k.eviction_threshold(10 * GIB), GIB);
    assert_eq!(k.eviction_threshold(GIB), 500 * MIB);
    // Allocatable subtracts the hard threshold only.
    assert_eq!(k.allocatable(10 * GIB), 10 * GIB - 500 * MIB);
}

#[test]
fn json_is_read_too() {
    let text = r#"{"apiVersion":"kubelet.config.k8s.io/v1beta1","kind":"KubeletConfiguration",
        "systemReserved":{"memory":"1073741824"},"kubeReserved":{"memory":536870912},
        "evictionHard":{"memory.available":"5%"}}"#;
    let k = parse_config(text).unwrap();
    assert_eq!(k.system_reserved, GIB);
    assert_eq!(k.kube_reserved, GIB / 2);
    assert_eq!(k.eviction_threshold(20 * GIB), GIB);
}

#[test]
fn the_kubelets_defaults_apply_as_it_applies_them() {
    let head = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
    // Nothing set: the 100Mi default.
    let k = parse_config(head).unwrap();
    assert_eq!(k, KubeletMemory::default());
    assert_eq!(k.eviction_threshold(GIB), 100 * MIB);
    // evictionHard set without memory.available: the kubelet leaves it at zero...
    let partial = format!("{head}evictionHard:\n  nodefs.available: \"10%\"\n");
    let k = parse_config(&partial).unwrap();
    assert_eq!(k.eviction_hard, Threshold::Bytes(0));
    assert_eq!(k.eviction_hard_origin, EvictionOrigin::Zero);
    // ...unless told to merge the defaults in.
    let merged = format!("{partial}mergeDefaultEvictionSettings: true\n");
    let k = parse_config(&merged).unwrap();
    assert_eq!(k.eviction_hard, Threshold::Bytes(100 * MIB));
    assert_eq!(k.eviction_hard_origin, EvictionOrigin::Default);
    // Null maps and values count as unset.
    let nulls =
        format!("{head}kubeReserved:\nsystemReserved: {{memory: null}}\nevictionHard: null\n");
    assert_eq!(parse_config(&nulls).unwrap(), KubeletMemory::default());
}

#[test]
fn an_invalid_file_names_the_key_at_fault() {
    let head = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
    let cases = [
        ("", "(file)", "empty"),
        ("a: [1, 2", "(file)", "not valid YAML"),
        ("- 1\n- 2\n", "(file)", "not a map"),
        (
            "kind: KubeletConfiguration\n---\nkind: KubeletConfiguration\n",
            "(file)",
            "2 YAML documents",
        ),
        (
            "apiVersion: v1\nkind: Config\n",
            "kind",
            "not \"KubeletConfiguration\"",
        ),
        (
            "apiVersion: kubelet.config.k8s.io/v1beta1\n",
            "kind",
            "missing",
        ),
        (
            "kind: KubeletConfiguration\napiVersion: v1\n",
            "apiVersion",
            "v1beta1",
        ),
        ("kind: KubeletConfiguration\n", "apiVersion", "missing"),
        (
            &format!("{head}evictionHard:\n  memory.available: lots\n"),
            "evictionHard[memory.available]",
            "not a Kubernetes quantity",
        ),
        (
            &format!("{head}evictionSoft:\n  memory.available: \"200%\"\n"),
            "evictionSoft[memory.available]",
            "above 100%",
        ),
        (
            &format!("{head}systemReserved:\n  memory: 1GB\n"),
            "systemReserved.memory",
            "unknown suffix",
        ),
        (
            &format!("{head}kubeReserved:\n  memory: -1Gi\n"),
            "kubeReserved.memory",
            "negative",
        ),
        (
            &format!("{head}kubeReserved:\n  memory: -5\n"),
            "kubeReserved.memory",
            "negative",
        ),
        (&format!("{head}kubeReserved: 1Gi\n"), "kubeReserved", "map"),
        (
            &format!("{head}kubeReserved:\n  memory: [1]\n"),
            "kubeReserved.memory",
            "quantity",
        ),
        (
            &format!("{head}enforceNodeAllocatable: pods\n"),
            "enforceNodeAllocatable",
            "list",
        ),
        (
            &format!("{head}mergeDefaultEvictionSettings: yes please\n"),
            "mergeDefaultEvictionSettings",
            "true or false",
        ),
    ];
    for (text, key, why) in cases {
        let e = parse_config(text).unwrap_err();
        assert_eq!(e.key, key, "{text:?}: {e}");
        assert!(e.message.contains(why), "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("`{key}`")), "{e}");
    }
}

#[test]
fn describe_names_every_figure() {
    let k = parse_config(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         systemReserved: {memory: 1Gi}\n",
    )
    .unwrap();
    let d = k.describe();
    for part in [
        "kubeReserved.memory 0",
        "systemReserved.memory 1",
        "evictionHard[memory.available] 100",
        "(default)",
        "evictionSoft[memory.available] unset",
    ] {
        assert!(d.contains(part), "{part}: {d}");
    }
}
