//! The crate's layering, checked from the source: every `crate::` / `super::`
//! path of a library file under `src/` may name only its own stage or a stage
//! below it in [`STAGES`] (the order `src/lib.rs` states), and no two modules
//! import each other, directly or through others. A module may use its own
//! submodules (a folder's `mod.rs` declares and re-exports them), so edges from
//! a module to its descendants are not counted; `#[cfg(test)]` code is not
//! counted either. The binary (`src/main.rs`, `src/cli/`) may use every stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The stages, lowest first (the order of `src/lib.rs`).
const STAGES: [&str; 9] = [
    "util",
    "heatmap",
    "data",
    "encode",
    "curate",
    "train",
    "model",
    "eval",
    "experiment",
];

/// A module path inside the crate, e.g. `["encode", "align"]`.
type ModPath = Vec<String>;

/// The module path of a library source file, `None` for the binary.
fn module_of(rel: &Path) -> Option<ModPath> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "main" || stem == "lib") {
        return (stem == "lib").then(Vec::new);
    }
    if parts.first().map(String::as_str) == Some("cli") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// The source without line comments and without `#[cfg(test)]` code (from the
/// first `#[cfg(test)]` line on: test modules sit at the end of a file).
fn code_of(src: &str) -> String {
    let mut out = String::new();
    for line in src.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path that starts with `crate`, `super` or `self` followed by `::`,
/// with `use` groups (`a::{b, c::{d}}`) expanded, as lists of segments.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':') {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if matches!(word.as_str(), "crate" | "super" | "self") && code_at(&chars, i, "::") {
                let mut prefix = vec![word];
                i = read_path(&chars, i, &mut prefix, &mut out);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn code_at(chars: &[char], i: usize, s: &str) -> bool {
    s.chars()
        .enumerate()
        .all(|(k, c)| chars.get(i + k) == Some(&c))
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Reads `::seg::seg...` or `::{...}` after `prefix`, pushing complete paths
/// to `out`; returns the position after the path.
fn read_path(
    chars: &[char],
    mut i: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let depth = prefix.len();
    loop {
        i = skip_space(chars, i);
        if !code_at(chars, i, "::") {
            break;
        }
        i = skip_space(chars, i + 2);
        if chars.get(i) == Some(&'{') {
            i += 1;
            loop {
                i = skip_space(chars, i);
                match chars.get(i) {
                    None => break,
                    Some('}') => {
                        i += 1;
                        break;
                    }
                    Some(',') => i += 1,
                    Some(c) if is_ident(*c) => {
                        let start = i;
                        while i < chars.len() && is_ident(chars[i]) {
                            i += 1;
                        }
                        prefix.push(chars[start..i].iter().collect());
                        i = read_path(chars, i, prefix, out);
                        prefix.pop();
                        // `as name` and anything else up to the next item.
                        while i < chars.len() && chars[i] != ',' && chars[i] != '}' {
                            i += 1;
                        }
                    }
                    Some(_) => i += 1,
                }
            }
            prefix.truncate(depth);
            return i;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if start == i {
            break;
        }
        prefix.push(chars[start..i].iter().collect());
    }
    out.push(prefix.clone());
    prefix.truncate(depth);
    i
}

/// The module a path from module `from` names: the longest module prefix of
/// the resolved path (`None` for paths outside the crate's modules).
fn resolve(from: &ModPath, path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut base: ModPath = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("self") | Some("super") => {
            base = from.clone();
            while let Some(seg) = rest.first() {
                match seg.as_str() {
                    "self" => {}
                    "super" => {
                        base.pop();
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    for seg in rest {
        base.push(seg.clone());
        if !modules.contains(&base) {
            base.pop();
            break;
        }
    }
    Some(base)
}

/// The import graph: module -> the modules it names (not itself, not its
/// own descendants).
fn graph(files: &BTreeMap<ModPath, String>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(m, src)| {
            let targets = paths_in(&code_of(src))
                .iter()
                .filter_map(|p| resolve(m, p, &modules))
                .filter(|t| !t.is_empty() && !t.starts_with(m))
                .collect();
            (m.clone(), targets)
        })
        .collect()
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Imports that run from a stage to a stage above it.
fn upward_imports(g: &BTreeMap<ModPath, BTreeSet<ModPath>>, stages: &[&str]) -> Vec<String> {
    let rank = |m: &ModPath| m.first().and_then(|s| stages.iter().position(|x| x == s));
    let mut bad = Vec::new();
    for (from, targets) in g {
        let Some(rf) = rank(from) else { continue };
        for t in targets {
            match rank(t) {
                Some(rt) if rt > rf => bad.push(format!(
                    "{} imports {} (stage {} is above stage {})",
                    name(from),
                    name(t),
                    t[0],
                    from[0]
                )),
                None => bad.push(format!(
                    "{} imports {}, which is in no stage",
                    name(from),
                    name(t)
                )),
                _ => {}
            }
        }
    }
    bad
}

/// One cycle of the graph, if there is one (as the list of modules on it).
fn find_cycle(g: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    fn visit(
        m: &ModPath,
        g: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        state: &mut BTreeMap<ModPath, u8>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for t in g.get(m).into_iter().flatten() {
            match state.get(t).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|x| x == t).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(t.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(t, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if state.get(m).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = entry.unwrap().path();
        if p.is_dir() {
            source_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn library_files() -> BTreeMap<ModPath, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    source_files(&src, &mut paths);
    paths
        .into_iter()
        .filter_map(|p| {
            let m = module_of(p.strip_prefix(&src).unwrap())?;
            let text = std::fs::read_to_string(&p).unwrap();
            Some((m, text))
        })
        .collect()
}

#[test]
fn lib_rs_declares_exactly_the_ordered_stages() {
    let files = library_files();
    let lib = &files[&Vec::new()];
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let ordered: BTreeSet<&str> = STAGES.iter().copied().collect();
    assert_eq!(
        declared, ordered,
        "a new top-level module must take its place in STAGES and in src/lib.rs's stated order"
    );
    // The order in lib.rs's documentation is the order here.
    let doc_order = lib
        .lines()
        .find(|l| l.contains("util") && l.contains("experiment") && l.contains('<'))
        .expect("src/lib.rs states the stage order as `util < ... < experiment`");
    let stated: Vec<&str> = doc_order
        .trim_start_matches("//!")
        .split('<')
        .map(|s| s.trim().trim_matches('`'))
        .collect();
    assert_eq!(stated, STAGES, "src/lib.rs states another order");
}

#[test]
fn no_stage_imports_a_stage_above_it() {
    let g = graph(&library_files());
    let bad = upward_imports(&g, &STAGES);
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn no_module_cycles() {
    let g = graph(&library_files());
    if let Some(c) = find_cycle(&g) {
        let names: Vec<String> = c.iter().map(name).collect();
        panic!("module cycle: {}", names.join(" -> "));
    }
}

/// The checks themselves: a constructed crate with an upward import and a
/// cycle is caught; parent-to-child and test-only imports are not counted.
#[test]
fn checks_catch_an_upward_import_and_a_cycle() {
    let m = |s: &str| -> ModPath { s.split("::").map(String::from).collect() };
    let files: BTreeMap<ModPath, String> = [
        ("lo", "pub mod a;\npub mod b;\npub use a::X;"),
        ("lo::a", "use super::b::Y; // crate::hi in a comment\n"),
        ("lo::b", "use crate::{lo::a::X, hi::{self as h}};"),
        (
            "hi",
            "use crate::lo::a::X;\n#[cfg(test)]\nmod tests { use crate::lo::b; }",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (m(k), v.to_string()))
    .collect();
    let g = graph(&files);
    assert_eq!(g[&m("lo")], BTreeSet::new(), "a module's own children");
    assert_eq!(g[&m("lo::a")], [m("lo::b")].into_iter().collect());
    assert_eq!(g[&m("lo::b")], [m("lo::a"), m("hi")].into_iter().collect());
    assert_eq!(g[&m("hi")], [m("lo::a")].into_iter().collect());
    assert_eq!(
        upward_imports(&g, &["lo", "hi"]),
        vec!["lo::b imports hi (stage hi is above stage lo)".to_string()]
    );
    assert!(upward_imports(&g, &["hi", "lo"]).len() == 1);
    let cycle = find_cycle(&g).expect("lo::a <-> lo::b");
    assert!(
        cycle.contains(&m("lo::a")) && cycle.contains(&m("lo::b")),
        "{cycle:?}"
    );
}
