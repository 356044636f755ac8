//! The kernel's layering, checked on the host: every file of `kernel/src` imports only from its
//! own layer or the ones below, no two files depend on each other (no cycle of files, however
//! long), and every layer above the hardware forbids `unsafe` in its module root.
//!
//! ```text
//!  8  main.rs                      declares the layers, runs boot then the top
//!  7  shell/  selftest/            the operator's shell, the in-kernel tests
//!  6  boot/                        the only caller of the layers' init functions
//!  5  services/  syscalls/         handlers on the messaging layer (and bench's); system calls
//!  4  messaging/                   mailboxes, dispatcher, doorbells, bulk
//!  3  tasks/                       user tasks: the program loader, the scheduler
//!  2  cpus/                        this instance's CPUs; starting another instance
//!  1  shared/                      this instance's view of the shared region
//!  0  instance arch/ memory/ console/ platform/    hardware: the only `unsafe`
//! ```
//!
//! Dependencies are read from the text, as `crate::…`, `$crate::…` and `super::…` paths
//! (braced `use` groups expanded) and the console's macros (`info!` and the like); a path
//! names the file of its longest module prefix. It is a reading of the source, not of the
//! compiler's resolution, but the kernel writes its paths in these forms only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom-up: a top-level module of `kernel/src` and its layer's number.
pub const LAYERS: &[(&str, u8)] = &[
    ("instance", 0),
    ("arch", 0),
    ("memory", 0),
    ("console", 0),
    ("platform", 0),
    ("shared", 1),
    ("cpus", 2),
    ("tasks", 3),
    ("messaging", 4),
    ("services", 5),
    ("syscalls", 5),
    ("boot", 6),
    ("shell", 7),
    ("selftest", 7),
];

/// The layer of `main.rs`, above all.
const TOP: u8 = 8;

/// Macros exported by the console (`#[macro_export]`, so they live at the crate root).
const CONSOLE_MACROS: &[&str] = &["error", "warn", "info", "debug", "println"];

/// A module path inside the kernel crate, e.g. `["services", "heartbeat"]`.
type ModPath = Vec<String>;

/// The files of a source tree, by module path.
fn modules(root: &Path) -> std::io::Result<BTreeMap<ModPath, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap_or(&path).with_extension("");
                let mut parts: ModPath = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "main" | "lib")
                ) {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    Ok(out)
}

/// `src` without its comments (line and block; string contents are kept as they are).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        if in_str {
            if b[i] == b'\\' {
                out.push_str(&src[i..(i + 2).min(b.len())]);
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                in_str = false;
            }
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            in_str = true;
        } else if src[i..].starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if src[i..].starts_with("/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
            continue;
        }
        let ch = src[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Parses `seg::seg::{…}` starting at `i` (after a root keyword and its `::`), pushing every
/// full path (prefix + segments) into `out`. Returns the index after what it read.
fn parse_tail(s: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == b'{' {
            // A group: comma-separated tails, each relative to `path`.
            i += 1;
            loop {
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
                let before = i;
                i = parse_tail(s, i, &path, out);
                // Skip `as name` and anything else up to the next separator.
                while i < s.len() && s[i] != b',' && s[i] != b'}' {
                    i += 1;
                }
                if i == before {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if i == start {
            out.push(path);
            return i;
        }
        let seg = String::from_utf8_lossy(&s[start..i]).into_owned();
        if seg != "self" {
            path.push(seg);
        }
        if s[i..].starts_with(b"::") {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// Every module path `file` (module `here`) names, resolved to paths from the crate root.
fn referenced_paths(src: &str, here: &ModPath, is_mod_root: bool) -> Vec<ModPath> {
    let s = strip_comments(src);
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !is_ident(b[i - 1]);
        if boundary && b[i..].starts_with(b"crate::") {
            let mut found = Vec::new();
            i = parse_tail(b, i + "crate::".len(), &[], &mut found);
            out.extend(found);
            continue;
        }
        if boundary && b[i..].starts_with(b"super::") {
            // `super` is the parent of the module; for a mod.rs, the module is the folder.
            let mut base: ModPath = here.clone();
            let mut j = i;
            while s[j..].starts_with("super::") {
                base.pop();
                j += "super::".len();
            }
            let _ = is_mod_root;
            let mut found = Vec::new();
            i = parse_tail(b, j, &base, &mut found);
            out.extend(found);
            continue;
        }
        if boundary {
            // A console macro used bare (imported with `use crate::{info, …}`), or
            // `$crate::console` inside a macro of the console itself.
            for m in CONSOLE_MACROS {
                if b[i..].starts_with(m.as_bytes()) && b[i + m.len()..].starts_with(b"!") {
                    out.push(vec![(*m).to_string()]);
                }
            }
        }
        i += 1;
    }
    // Children of a module root named bare (`child::item`), as in `mod child; child::f()`.
    if is_mod_root {
        let mut i = 0;
        while i < b.len() {
            let boundary = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':');
            if boundary && is_ident(b[i]) {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                if b[i..].starts_with(b"::") {
                    let mut p = here.clone();
                    p.push(s[start..i].to_string());
                    out.push(p);
                }
                continue;
            }
            i += 1;
        }
    }
    out
}

/// The file a module path lands in: its longest prefix that is a file of the tree.
fn resolve<'a>(mods: &'a BTreeMap<ModPath, PathBuf>, path: &ModPath) -> Option<&'a ModPath> {
    if path.len() == 1 && CONSOLE_MACROS.contains(&path[0].as_str()) {
        return mods
            .get_key_value(&vec!["console".to_string()])
            .map(|(k, _)| k);
    }
    (1..=path.len())
        .rev()
        .find_map(|n| mods.get_key_value(&path[..n].to_vec()).map(|(k, _)| k))
}

/// The layer of a module (by its top-level module), or `None` for a module not in [`LAYERS`].
pub fn layer_of(m: &ModPath) -> Option<u8> {
    match m.first() {
        None => Some(TOP),
        Some(top) => LAYERS.iter().find(|(n, _)| n == top).map(|&(_, l)| l),
    }
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "main.rs".into()
    } else {
        m.join("/")
    }
}

/// The dependency graph of the tree at `root`: for each file, the files it uses.
pub fn graph(root: &Path) -> std::io::Result<BTreeMap<ModPath, BTreeSet<ModPath>>> {
    let mods = modules(root)?;
    let mut edges = BTreeMap::new();
    for (m, path) in &mods {
        let src = std::fs::read_to_string(path)?;
        let is_root = path
            .file_stem()
            .is_some_and(|s| s == "mod" || s == "main" || s == "lib");
        let mut deps = BTreeSet::new();
        for p in referenced_paths(&src, m, is_root) {
            if let Some(t) = resolve(&mods, &p)
                && t != m
            {
                deps.insert(t.clone());
            }
        }
        edges.insert(m.clone(), deps);
    }
    Ok(edges)
}

/// The strongly connected sets of more than one file (each a cycle of dependencies).
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    // Tarjan's algorithm, iteratively.
    let nodes: Vec<&ModPath> = edges.keys().collect();
    let index_of: BTreeMap<&ModPath, usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let succ: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            edges[*n]
                .iter()
                .filter_map(|t| index_of.get(t).copied())
                .collect()
        })
        .collect();
    let n = nodes.len();
    let (mut index, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut next, mut out) = (Vec::new(), 0, Vec::new());
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut k)) = work.last_mut() {
            if *k == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on[v] = true;
            }
            if let Some(&w) = succ[v].get(*k) {
                *k += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on[w] = false;
                    comp.push(nodes[w].clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    out.push(comp);
                }
            }
        }
    }
    out
}

/// Checks the tree at `root`: every problem found, as a sentence (empty when it holds).
pub fn check(root: &Path) -> std::io::Result<Vec<String>> {
    let edges = graph(root)?;
    let mods = modules(root)?;
    let mut problems = Vec::new();
    for (from, deps) in &edges {
        let Some(lf) = layer_of(from) else {
            problems.push(format!(
                "{} is in no layer: add its top-level module to LAYERS in tests/src/layers.rs",
                show(from)
            ));
            continue;
        };
        for to in deps {
            if let Some(lt) = layer_of(to)
                && lt > lf
            {
                problems.push(format!(
                    "{} (layer {lf}) uses {} (layer {lt}), a layer above it",
                    show(from),
                    show(to)
                ));
            }
        }
    }
    for c in cycles(&edges) {
        let names: Vec<String> = c.iter().map(show).collect();
        problems.push(format!(
            "a cycle of {} files: {}",
            c.len(),
            names.join(", ")
        ));
    }
    for &(top, layer) in LAYERS {
        if layer == 0 {
            continue;
        }
        let Some(path) = mods.get(&vec![top.to_string()]) else {
            continue;
        };
        let src = std::fs::read_to_string(path)?;
        if !src.contains("#![forbid(unsafe_code)]") {
            problems.push(format!(
                "{} (layer {layer}) does not forbid unsafe code (#![forbid(unsafe_code)])",
                path.display()
            ));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/src")
    }

    #[test]
    fn the_kernel_is_layered_without_cycles() {
        let problems = check(&kernel_src()).expect("reading kernel/src");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn every_top_level_module_has_a_layer() {
        let mods = modules(&kernel_src()).unwrap();
        for m in mods.keys() {
            assert!(layer_of(m).is_some(), "{} has no layer", show(m));
        }
    }

    #[test]
    fn paths_are_read_in_every_form() {
        let here: ModPath = vec!["services".into(), "cpu".into()];
        let src = r#"
            // crate::boot::ignored in a comment
            use crate::{arch::{apic, cpu::{self, PerCpu}}, info};
            use super::moves::MoveError;
            fn f() { crate::shared::region::get(); warn!("x"); let s = "crate::not::code"; }
        "#;
        let got: BTreeSet<String> = referenced_paths(src, &here, false)
            .into_iter()
            .map(|p| p.join("::"))
            .collect();
        for want in [
            "arch::apic",
            "arch::cpu",
            "arch::cpu::PerCpu",
            "info",
            "services::moves::MoveError",
            "shared::region::get",
            "warn",
        ] {
            assert!(got.contains(want), "{want} missing from {got:?}");
        }
        assert!(!got.iter().any(|p| p.starts_with("boot")), "{got:?}");
    }

    /// The check finds what it is for: an upward import, a cycle, a missing `forbid`.
    #[test]
    fn a_bad_tree_is_refused() {
        let dir = std::env::temp_dir().join(format!("layers-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |p: &str, s: &str| {
            let path = dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        write("main.rs", "mod arch; mod messaging; mod services;");
        write("arch/mod.rs", "pub mod apic;");
        write("arch/apic.rs", "fn f() { crate::messaging::send(); }");
        write(
            "messaging/mod.rs",
            "#![forbid(unsafe_code)]\npub mod a; pub mod b;",
        );
        write("messaging/a.rs", "use super::b::x;");
        write("messaging/b.rs", "use super::a::y;");
        write("services/mod.rs", "use crate::messaging::a;");
        let problems = check(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let all = problems.join("\n");
        assert!(
            all.contains("arch/apic (layer 0) uses messaging (layer 4)"),
            "{all}"
        );
        assert!(
            all.contains("a cycle of 2 files: messaging/a, messaging/b"),
            "{all}"
        );
        assert!(
            all.contains("services/mod.rs (layer 5) does not forbid"),
            "{all}"
        );
        assert_eq!(problems.len(), 3, "{all}");
    }
}
