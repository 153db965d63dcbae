//! `cargo xtask layers`: the library's module graph, checked. Every `use` and every
//! inline `crate::`/`super::` path of `multiroute/src` (test code left out) is an
//! arrow from its file to the module file it names. Two rules: no circle between
//! files, and no arrow from a lower room to a higher one in
//! net → config → plan → netlink → observe → apply → run (a room may use those
//! before it).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The rooms, lowest first; a module outside them (`lib`, `version`) is unranked.
const ROOMS: &[&str] = &[
    "net",
    "path_error",
    "instance",
    "config",
    "plan",
    "netlink",
    "observe",
    "apply",
    "run",
];

/// Module path (`crate::apply::datapath`) of every library source file.
fn modules(src: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name != "bin") {
                    dirs.push(path);
                }
                continue;
            }
            let Ok(relative) = path.strip_prefix(src) else {
                continue;
            };
            let Some(text) = relative.to_str().and_then(|p| p.strip_suffix(".rs")) else {
                continue;
            };
            // The binary (`main.rs`, `commands/`) is a crate of its own above all rooms.
            if text == "main" || text.starts_with("commands") || text.ends_with("tests") {
                continue;
            }
            let text = text.trim_end_matches("/mod");
            let module = match text {
                "lib" => "crate".to_owned(),
                other => format!("crate::{}", other.replace('/', "::")),
            };
            found.insert(module, path);
        }
    }
    Ok(found)
}

/// Source without comments and without the test code at its end.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or(text);
    before_tests
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| line.split(" //").next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Flattens a `use` tree (`crate::{a::{b, c}, d as e}`) into paths.
fn flatten(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::").trim();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let prefix = join(prefix, head);
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    flatten(&inner[start..i], &prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        flatten(&inner[start..], &prefix, out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        out.push(join(prefix, path.trim_end_matches("::*")));
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty() || path == "self") {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}::{path}"),
    }
}

/// Every module path the code names: `use` trees, then inline paths in the rest.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut outside_use = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let statement = &rest[at + 4..];
        let end = statement.find(';').unwrap_or(statement.len());
        let boundary = at == 0 || !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        outside_use.push_str(&rest[..at]);
        if boundary {
            flatten(&statement[..end], "", &mut paths);
        } else {
            outside_use.push_str(&rest[at..at + 4 + end]);
        }
        rest = &statement[end..];
    }
    outside_use.push_str(rest);
    paths.extend(inline_paths(&outside_use, &["crate::", "super::"]));
    paths
}

/// Paths starting with one of `starts` (`crate::`, `super::`, `child::`) at a word
/// boundary.
fn inline_paths(code: &str, starts: &[&str]) -> Vec<String> {
    let mut paths = Vec::new();
    for start in starts {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let boundary =
                !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':');
            if boundary {
                paths.push(tail[..len].trim_end_matches(':').to_owned());
            }
            rest = &tail[len..];
        }
    }
    paths
}

/// The module a path inside `module` (of file `is_mod_file`) names: `super` and
/// `self` resolved, cut to the longest prefix that is a module file.
fn resolve(
    path: &str,
    module: &str,
    is_dir_module: bool,
    known: &BTreeMap<String, PathBuf>,
) -> Option<String> {
    let mut here: Vec<&str> = module.split("::").collect();
    let mut parts = path.split("::").peekable();
    match parts.peek().copied() {
        Some("crate") => {
            here = vec!["crate"];
            parts.next();
        }
        Some("super") => {
            // A `foo.rs` or `foo/mod.rs` module's `super` is its parent.
            let _ = is_dir_module;
            while parts.peek() == Some(&"super") {
                here.pop();
                parts.next();
            }
        }
        Some("self") => {
            parts.next();
        }
        _ => {
            // A path relative to the module: a child module (`use child::X`).
            let first = parts.peek().copied()?;
            let child = format!("{module}::{first}");
            if !known.contains_key(&child) {
                return None;
            }
        }
    }
    let mut full: Vec<String> = here.iter().map(|s| (*s).to_owned()).collect();
    let mut best = None;
    if known.contains_key(&full.join("::")) {
        best = Some(full.join("::"));
    }
    for part in parts {
        full.push(part.to_owned());
        let candidate = full.join("::");
        if known.contains_key(&candidate) {
            best = Some(candidate);
        }
    }
    best
}

fn room(module: &str) -> Option<usize> {
    let top = module.split("::").nth(1)?;
    ROOMS.iter().position(|room| *room == top)
}

/// The arrows between module files.
fn graph(src: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let known = modules(src)?;
    let mut arrows = BTreeMap::new();
    for (module, path) in &known {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let is_dir_module = path.ends_with("mod.rs") || path.ends_with("lib.rs");
        let code = code(&text);
        // Its child modules named inline (`link_events::subscribe(…)`).
        let children: Vec<String> = known
            .keys()
            .filter_map(|other| other.strip_prefix(&format!("{module}::")))
            .filter(|child| !child.contains("::"))
            .map(|child| format!("{child}::"))
            .collect();
        let children: Vec<&str> = children.iter().map(String::as_str).collect();
        let mut named = named_paths(&code);
        named.extend(inline_paths(&code, &children));
        let targets: BTreeSet<String> = named
            .iter()
            .filter_map(|named| resolve(named, module, is_dir_module, &known))
            .filter(|target| target != module && target != "crate")
            .collect();
        arrows.insert(module.clone(), targets);
    }
    Ok(arrows)
}

/// Circles between files (strongly connected components of more than one file).
fn circles(arrows: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reaches = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(next) = todo.pop() {
            for target in arrows.get(&next).into_iter().flatten() {
                if seen.insert(target.clone()) {
                    todo.push(target.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        arrows.keys().map(|m| (m, reaches(m))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for module in arrows.keys() {
        if done.contains(module) || !reach[module].contains(module) {
            continue;
        }
        let circle: Vec<String> = reach[module]
            .iter()
            .filter(|other| reach.get(other).is_some_and(|r| r.contains(module)))
            .cloned()
            .collect();
        done.extend(circle.iter().cloned());
        found.push(circle);
    }
    found
}

pub fn check(root: &Path) -> Result<()> {
    let arrows = graph(&root.join("multiroute/src"))?;
    let mut problems = Vec::new();
    for circle in circles(&arrows) {
        problems.push(format!("circle: {}", circle.join(" ⇄ ")));
    }
    for (from, targets) in &arrows {
        for to in targets {
            if let (Some(low), Some(high)) = (room(from), room(to))
                && high > low
            {
                problems.push(format!("upward arrow: {from} → {to}"));
            }
        }
    }
    let files = arrows.len();
    let count: usize = arrows.values().map(BTreeSet::len).sum();
    if problems.is_empty() {
        println!("layers: {files} modules, {count} arrows, no circle, no upward arrow");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("layers: {problem}");
    }
    bail!(
        "{} layering problems in multiroute/src (rooms, lowest first: {})",
        problems.len(),
        ROOMS.join(" → ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_flatten_into_paths() {
        let mut out = Vec::new();
        flatten("crate::{a::{b, c::D}, e as f, g::*}", "", &mut out);
        assert_eq!(
            out,
            ["crate::a::b", "crate::a::c::D", "crate::e", "crate::g"]
        );
    }

    #[test]
    fn a_circle_and_its_members_are_found() {
        let arrows: BTreeMap<String, BTreeSet<String>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec!["a"]),
        ]
        .into_iter()
        .map(|(m, t)| (m.to_owned(), t.into_iter().map(str::to_owned).collect()))
        .collect();
        assert_eq!(circles(&arrows), [vec!["a", "b", "c"]]);
    }
}
