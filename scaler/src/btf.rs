//! Kernel struct offsets and features from the running kernel's BTF.
//!
//! Rust eBPF programs have no CO-RE relocations, so the field offsets they follow
//! (`task_struct.cgroups`, `css_set.subsys`, `mem_cgroup.memory`, ...) are looked up here at load
//! time and handed to the programs as a read-only global ([`KernelOffsets`]). Nothing about one
//! kernel's layout is hard-coded: a field that moved is found where it is, and a field that is
//! gone is an error naming it.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use scaler_common::{KernelOffsets, NO_OFFSET};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF from {path}: {source}; scaler needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 are)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no {kind} named `{name}`")]
    MissingType { kind: &'static str, name: String },
    #[error("kernel BTF: `{ty}` has no member `{member}`")]
    MissingMember { ty: String, member: String },
    #[error("kernel BTF: `{ty}.{member}` is a bit field or not byte aligned")]
    Unaligned { ty: String, member: String },
    #[error("kernel BTF: `{ty}.{member}` is at offset {offset}, beyond what the programs address")]
    TooFar { ty: String, member: String, offset: u64 },
    #[error("kernel BTF lookup failed: {0}")]
    Btf(#[from] btf_rs::Error),
}

/// Optional kernel features the programs use, probed from BTF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `memcg/count_memcg_events` exists (6.10+): early warnings on usage crossings.
    pub count_memcg_events: bool,
    /// `oom/mark_victim` exists.
    pub mark_victim: bool,
    /// `oom/mark_victim` passes the victim's `task_struct *` (6.2+) rather than its pid.
    pub mark_victim_has_task: bool,
    /// `vmscan/mm_vmscan_memcg_reclaim_begin` exists.
    pub memcg_reclaim: bool,
    /// `vmscan/mm_vmscan_direct_reclaim_begin` exists.
    pub direct_reclaim: bool,
}

/// The running kernel's BTF, with the lookups scaler needs.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Reads the running kernel's BTF from [`VMLINUX_BTF`].
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path)
            .map_err(|source| BtfError::Read { path: path.to_owned(), source })?;
        Ok(Self { btf })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        let btf = Btf::from_bytes(bytes)
            .map_err(|source| BtfError::Read { path: PathBuf::from("<bytes>"), source })?;
        Ok(Self { btf })
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        // A struct may appear more than once (a forward declaration and the definition); take
        // the one with members.
        let mut found = None;
        for t in types {
            if let Type::Struct(s) | Type::Union(s) = t {
                if found.as_ref().is_none_or(|f: &btf_rs::Struct| f.members.is_empty()) {
                    found = Some(s);
                }
            }
        }
        found.ok_or_else(|| BtfError::MissingType { kind: "struct", name: name.to_owned() })
    }

    /// Byte offset of `ty.member` (searching through anonymous struct/union members).
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        let s = self.named_struct(ty)?;
        let bits = self.find_member(&s, member, 0)?.ok_or_else(|| BtfError::MissingMember {
            ty: ty.to_owned(),
            member: member.to_owned(),
        })?;
        if bits % 8 != 0 {
            return Err(BtfError::Unaligned { ty: ty.to_owned(), member: member.to_owned() });
        }
        let offset = bits / 8;
        u32::try_from(offset).ok().filter(|o| *o < (1 << 20)).ok_or(BtfError::TooFar {
            ty: ty.to_owned(),
            member: member.to_owned(),
            offset,
        })
    }

    fn find_member(
        &self,
        s: &btf_rs::Struct,
        member: &str,
        base_bits: u64,
    ) -> Result<Option<u64>, BtfError> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let bits = base_bits + u64::from(m.bit_offset());
            if name == member {
                if m.bitfield_size().is_some_and(|b| b != 0) {
                    return Err(BtfError::Unaligned {
                        ty: "<struct>".into(),
                        member: member.to_owned(),
                    });
                }
                return Ok(Some(bits));
            }
            if name.is_empty() {
                // Anonymous struct or union: its members are ours.
                let mut t = self.btf.resolve_chained_type(m)?;
                loop {
                    match t {
                        Type::Struct(ref inner) | Type::Union(ref inner) => {
                            if let Some(found) = self.find_member(inner, member, bits)? {
                                return Ok(Some(found));
                            }
                            break;
                        }
                        Type::Const(_) | Type::Volatile(_) | Type::Typedef(_) => {
                            t = self.btf.resolve_chained_type(t.as_btf_type().unwrap())?;
                        }
                        _ => break,
                    }
                }
            }
        }
        Ok(None)
    }

    /// Value of an enumerator (e.g. `memory_cgrp_id` of `enum cgroup_subsys_id`).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Result<u32, BtfError> {
        for t in self.btf.resolve_types_by_name(enum_name).unwrap_or_default() {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if self.btf.resolve_name(m).unwrap_or_default() == variant {
                        return Ok(m.val());
                    }
                }
            }
        }
        Err(BtfError::MissingType { kind: "enumerator", name: format!("{enum_name}::{variant}") })
    }

    /// Parameters of a tracepoint's BTF prototype (`btf_trace_<name>`), without the leading
    /// context pointer; `None` if the kernel has no such tracepoint.
    fn tracepoint_params(&self, name: &str) -> Option<Vec<Type>> {
        let typedef = format!("btf_trace_{name}");
        let t = self.btf.resolve_types_by_name(&typedef).ok()?.into_iter().next()?;
        let Type::Typedef(td) = t else { return None };
        let Type::Ptr(p) = self.btf.resolve_chained_type(&td).ok()? else { return None };
        let Type::FuncProto(fp) = self.btf.resolve_chained_type(&p).ok()? else { return None };
        let mut params = Vec::new();
        for prm in fp.parameters.iter().skip(1) {
            params.push(self.btf.resolve_chained_type(prm).ok()?);
        }
        Some(params)
    }

    /// Number of parameters of a tracepoint (without the context pointer); `None` if the kernel
    /// has no such tracepoint. Tells prototype versions apart (e.g. `sched_switch` gained
    /// `prev_state` in 5.18).
    pub fn tracepoint_arity(&self, name: &str) -> Option<usize> {
        self.tracepoint_params(name).map(|p| p.len())
    }

    /// Whether the kernel has a tracepoint (from its `btf_trace_<name>` typedef).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.tracepoint_params(name).is_some()
    }

    /// Probes the optional features.
    pub fn features(&self) -> Features {
        let mark_victim = self.tracepoint_params("mark_victim");
        Features {
            count_memcg_events: self.has_tracepoint("count_memcg_events"),
            mark_victim: mark_victim.is_some(),
            mark_victim_has_task: mark_victim
                .as_ref()
                .and_then(|p| p.first())
                .is_some_and(|t| matches!(t, Type::Ptr(_))),
            memcg_reclaim: self.has_tracepoint("mm_vmscan_memcg_reclaim_begin"),
            direct_reclaim: self.has_tracepoint("mm_vmscan_direct_reclaim_begin"),
        }
    }

    /// The offsets the kernel programs need. Every field is required except the cpu
    /// controller's id (absent on kernels built without CONFIG_CGROUP_SCHED).
    pub fn kernel_offsets(&self, page_size: u64) -> Result<KernelOffsets, BtfError> {
        let f = self.features();
        Ok(KernelOffsets {
            task_cgroups: self.member_offset("task_struct", "cgroups")?,
            task_tgid: self.member_offset("task_struct", "tgid")?,
            task_pid: self.member_offset("task_struct", "pid")?,
            task_comm: self.member_offset("task_struct", "comm")?,
            css_set_subsys: self.member_offset("css_set", "subsys")?,
            memory_cgrp_id: self.enum_value("cgroup_subsys_id", "memory_cgrp_id")?,
            cpu_cgrp_id: self.enum_value("cgroup_subsys_id", "cpu_cgrp_id").unwrap_or(NO_OFFSET),
            css_cgroup: self.member_offset("cgroup_subsys_state", "cgroup")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            kn_id: self.member_offset("kernfs_node", "id")?,
            memcg_css: self.member_offset("mem_cgroup", "css")?,
            memcg_memory: self.member_offset("mem_cgroup", "memory")?,
            pc_usage: self.member_offset("page_counter", "usage")?,
            pc_max: self.member_offset("page_counter", "max")?,
            pc_parent: self.member_offset("page_counter", "parent")?,
            page_shift: page_size.trailing_zeros(),
            mark_victim_has_task: u32::from(f.mark_victim_has_task),
            _pad: 0,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal BTF blob writer for tests: enough kinds to describe the structs we look up.
    #[derive(Default)]
    pub(crate) struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_ENUM: u32 = 6;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_FUNC_PROTO: u32 = 13;

    impl BtfBuilder {
        pub(crate) fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0], next_id: 1 }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn u32(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        fn head(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let n = self.s(name);
            self.u32(n);
            self.u32((kind << 24) | vlen);
            self.u32(size_or_type);
            let id = self.next_id;
            self.next_id += 1;
            id
        }
        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, size);
            self.u32(size * 8);
            id
        }
        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.head("", KIND_PTR, 0, to)
        }
        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, KIND_TYPEDEF, 0, to)
        }
        /// Members: (name, type id, byte offset).
        pub(crate) fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.aggregate(KIND_STRUCT, name, size, members)
        }
        pub(crate) fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.aggregate(KIND_UNION, name, size, members)
        }
        fn aggregate(&mut self, kind: u32, name: &str, size: u32, m: &[(&str, u32, u32)]) -> u32 {
            let id = self.head(name, kind, m.len() as u32, size);
            for (n, t, off) in m {
                let n = self.s(n);
                self.u32(n);
                self.u32(*t);
                self.u32(off * 8);
            }
            id
        }
        pub(crate) fn enumeration(&mut self, name: &str, variants: &[(&str, u32)]) -> u32 {
            let id = self.head(name, KIND_ENUM, variants.len() as u32, 4);
            for (n, v) in variants {
                let n = self.s(n);
                self.u32(n);
                self.u32(*v);
            }
            id
        }
        pub(crate) fn func_proto(&mut self, params: &[u32]) -> u32 {
            let id = self.head("", KIND_FUNC_PROTO, params.len() as u32, 0);
            for p in params {
                self.u32(0);
                self.u32(*p);
            }
            id
        }
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            out.extend_from_slice(&24_u32.to_le_bytes()); // hdr_len
            out.extend_from_slice(&0_u32.to_le_bytes()); // type_off
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes()); // str_off
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A fake kernel: the structs scaler follows, at made-up offsets (some inside anonymous
    /// members), and a `mark_victim` tracepoint that passes a task or a pid.
    pub(crate) fn fake_kernel(victim_is_task: bool, with_count_memcg_events: bool) -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let void_ptr = b.ptr(0);
        let int = b.int("int", 4);
        let u64t = b.int("long long unsigned int", 8);
        let chr = b.int("char", 1);
        let css_set = b.strukt("css_set", 200, &[("refcount", int, 0), ("subsys", void_ptr, 8)]);
        let css_set_ptr = b.ptr(css_set);
        // task_struct with pid/tgid inside an anonymous struct (like randomized layouts).
        let anon = b.strukt("", 8, &[("pid", int, 0), ("tgid", int, 4)]);
        let task = b.strukt(
            "task_struct",
            4096,
            &[("state", int, 0), ("", anon, 1000), ("comm", chr, 1600), ("cgroups", css_set_ptr, 2304)],
        );
        let task_ptr = b.ptr(task);
        b.strukt("cgroup_subsys_state", 200, &[("cgroup", void_ptr, 0), ("parent", void_ptr, 112)]);
        b.strukt("cgroup", 2000, &[("self", int, 0), ("kn", void_ptr, 264)]);
        let id_union = b.union("", 8, &[("id", u64t, 0)]);
        b.strukt("kernfs_node", 128, &[("count", int, 0), ("", id_union, 80)]);
        b.strukt("page_counter", 192, &[("usage", u64t, 0), ("max", u64t, 128), ("parent", void_ptr, 168)]);
        b.strukt("mem_cgroup", 4096, &[("css", int, 0), ("memory", int, 256)]);
        b.enumeration(
            "cgroup_subsys_id",
            &[("cpuset_cgrp_id", 0), ("cpu_cgrp_id", 1), ("cpuacct_cgrp_id", 2), ("memory_cgrp_id", 4)],
        );
        let victim = if victim_is_task { task_ptr } else { int };
        let fp = b.func_proto(&[void_ptr, victim, int]);
        let fpp = b.ptr(fp);
        b.typedef("btf_trace_mark_victim", fpp);
        let fp2 = b.func_proto(&[void_ptr, int, int]);
        let fp2p = b.ptr(fp2);
        b.typedef("btf_trace_mm_vmscan_memcg_reclaim_begin", fp2p);
        if with_count_memcg_events {
            let fp3 = b.func_proto(&[void_ptr, void_ptr, int, u64t]);
            let fp3p = b.ptr(fp3);
            b.typedef("btf_trace_count_memcg_events", fp3p);
        }
        b.build()
    }

    #[test]
    fn offsets_from_fake_kernel() {
        let k = KernelBtf::from_bytes(&fake_kernel(true, true)).unwrap();
        let o = k.kernel_offsets(4096).unwrap();
        assert_eq!(o.task_cgroups, 2304);
        assert_eq!(o.task_pid, 1000);
        assert_eq!(o.task_tgid, 1004);
        assert_eq!(o.task_comm, 1600);
        assert_eq!(o.css_set_subsys, 8);
        assert_eq!(o.memory_cgrp_id, 4);
        assert_eq!(o.cpu_cgrp_id, 1);
        assert_eq!(o.css_cgroup, 0);
        assert_eq!(o.cgroup_kn, 264);
        assert_eq!(o.kn_id, 80, "found inside an anonymous union");
        assert_eq!(o.memcg_css, 0);
        assert_eq!(o.memcg_memory, 256);
        assert_eq!((o.pc_usage, o.pc_max, o.pc_parent), (0, 128, 168));
        assert_eq!(o.page_shift, 12);
        assert_eq!(o.mark_victim_has_task, 1);
    }

    #[test]
    fn features_follow_tracepoint_prototypes() {
        let new = KernelBtf::from_bytes(&fake_kernel(true, true)).unwrap().features();
        assert!(new.mark_victim && new.mark_victim_has_task && new.count_memcg_events);
        assert!(new.memcg_reclaim && !new.direct_reclaim);
        let old = KernelBtf::from_bytes(&fake_kernel(false, false)).unwrap().features();
        assert!(old.mark_victim && !old.mark_victim_has_task && !old.count_memcg_events);
        let o = KernelBtf::from_bytes(&fake_kernel(false, false)).unwrap().kernel_offsets(4096);
        assert_eq!(o.unwrap().mark_victim_has_task, 0);
    }

    /// An older kernel: no `count_memcg_events` (before 6.10), no `mark_victim`, no direct
    /// reclaim tracepoint. The features say so, and `Pipeline::load` leaves those optional
    /// programs out with a warning naming the tracepoint; the required reclaim one is there.
    #[test]
    fn an_older_kernel_lacks_the_optional_tracepoints() {
        let mut b = BtfBuilder::new();
        let void_ptr = b.ptr(0);
        let int = b.int("int", 4);
        let fp = b.func_proto(&[void_ptr, int, int]);
        let fpp = b.ptr(fp);
        b.typedef("btf_trace_mm_vmscan_memcg_reclaim_begin", fpp);
        let k = KernelBtf::from_bytes(&b.build()).unwrap();
        let f = k.features();
        assert!(f.memcg_reclaim);
        assert!(!f.count_memcg_events && !f.mark_victim && !f.mark_victim_has_task && !f.direct_reclaim);
        assert!(!k.has_tracepoint("count_memcg_events") && !k.has_tracepoint("mark_victim"));
        // Without count_memcg_events alone (6.1-6.9): OOM reports stay, early warnings go.
        let f = KernelBtf::from_bytes(&fake_kernel(true, false)).unwrap().features();
        assert!(!f.count_memcg_events && f.mark_victim && f.mark_victim_has_task);
    }

    #[test]
    fn missing_member_is_named() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        b.strukt("task_struct", 64, &[("pid", int, 0)]);
        let k = KernelBtf::from_bytes(&b.build()).unwrap();
        let err = k.member_offset("task_struct", "cgroups").unwrap_err();
        assert_eq!(err.to_string(), "kernel BTF: `task_struct` has no member `cgroups`");
        let err = k.member_offset("css_set", "subsys").unwrap_err();
        assert!(err.to_string().contains("no struct named `css_set`"), "{err}");
        let err = k.kernel_offsets(4096).unwrap_err();
        assert!(err.to_string().contains("cgroups"), "{err}");
    }

    #[test]
    fn unreadable_btf_names_the_path_and_the_fix() {
        let err = KernelBtf::from_file(Path::new("/nonexistent/btf")).err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/btf") && msg.contains("CONFIG_DEBUG_INFO_BTF"), "{msg}");
    }

    /// On a machine with kernel BTF, the real lookups succeed and look sane.
    #[test]
    fn running_kernel_if_available() {
        let Ok(k) = KernelBtf::from_sys() else {
            eprintln!("skipping: no readable {VMLINUX_BTF}");
            return;
        };
        let o = k.kernel_offsets(4096).expect("offsets of the running kernel");
        assert!(o.task_cgroups > 0 && o.task_cgroups != NO_OFFSET);
        assert!(o.memory_cgrp_id < 16);
        assert!(k.features().memcg_reclaim);
    }
}
