//! The house drawn from the code's imports (issue 6 item 7): within each
//! firmware crate, the modules that do not contain one another import
//! each other without cycles — `engine ↔ delivery ↔ destination` or
//! `store ↔ batch ↔ reader` must not come back. A submodule's use of its
//! parent (`super::Engine`) and a parent's use of its own submodules are
//! one unit, not an import between modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`relay::engine::permits`) of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` and `super::…::a` path in `text`, resolved against
/// `module`, cut to the longest known module.
fn references(
    text: &str,
    module: &[String],
    known: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    // Code after `#[cfg(test)]` is the module's tests, which may use any
    // part of the crate.
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("crate::") || w.starts_with("super::"))
        .collect();
    for word in words {
        let mut segments: Vec<&str> = word.split("::").filter(|s| !s.is_empty()).collect();
        let mut path: Vec<String> = if segments.first() == Some(&"crate") {
            segments.remove(0);
            Vec::new()
        } else {
            module.to_vec()
        };
        while segments.first() == Some(&"super") {
            segments.remove(0);
            path.pop();
        }
        let mut best = path.clone();
        for s in segments {
            path.push(s.to_owned());
            if known.contains(&path) {
                best = path.clone();
            }
        }
        found.insert(best);
    }
    found
}

fn contains(outer: &[String], inner: &[String]) -> bool {
    inner.starts_with(outer)
}

/// The import graph of one crate, without edges between a module and its
/// ancestors or descendants.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let known: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file).expect("read");
        let targets = references(&text, &module, &known)
            .into_iter()
            .filter(|t| !contains(t, &module) && !contains(&module, t))
            .collect();
        edges.insert(module, targets);
    }
    edges
}

/// A cycle as `a -> b -> a`, if there is one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<String> {
    // Edges between modules stand for edges between the top-most modules
    // that are not ancestors of each other: lift each target to the
    // sibling-level ancestor so a cycle through submodules is seen too.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<String> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut names: Vec<String> =
                        stack[start..].iter().map(|n| n.join("::")).collect();
                    names.push(next.join("::"));
                    return Some(names.join(" -> "));
                }
                0 => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// Lifts every edge `a -> b` to `a' -> b'`, where `a'` and `b'` are the
/// children of the deepest common ancestor: `relay::engine::permits ->
/// relay::delivery` is `relay::engine -> relay::delivery`.
fn lifted(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, targets) in edges {
        for to in targets {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            let a = from[..=common.min(from.len() - 1)].to_vec();
            let b = to[..=common.min(to.len() - 1)].to_vec();
            out.entry(a).or_default().insert(b);
        }
    }
    out
}

#[test]
fn firmware_crates_have_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [
        "src",
        "crates/proto/src",
        "crates/store/src",
        "crates/tls/src",
    ] {
        let edges = graph(&root.join(src));
        assert!(edges.len() > 1, "{src}: no modules found");
        if let Some(cycle) = find_cycle(&lifted(&edges)) {
            panic!("{src}: import cycle {cycle}");
        }
    }
}

#[test]
fn the_checker_finds_a_cycle_through_submodules() {
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let mut edges = BTreeMap::new();
    edges.insert(
        m("relay::engine::permits"),
        BTreeSet::from([m("relay::delivery")]),
    );
    edges.insert(m("relay::delivery"), BTreeSet::from([m("relay::engine")]));
    edges.insert(m("relay::engine"), BTreeSet::new());
    let cycle = find_cycle(&lifted(&edges)).expect("a cycle");
    assert!(
        cycle.contains("relay::engine -> relay::delivery"),
        "{cycle}"
    );
}
