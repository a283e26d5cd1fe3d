//! The module layout, checked against the code (a test only): no import circle between any two files of `src/`,
//! every import between top-level modules goes down the layers docs/ARCHITECTURE.md declares (its `layers`
//! block), and every file opens with a `//!` line saying what it is for. Read from the `use crate::` /
//! `crate::x` / `super::x` paths of each file (test modules left out; a `pub use` of the file's own children is
//! layout, not a dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every `.rs` file of `src/` (but the binary's `main.rs`) by its module path.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src").with_extension("");
        let mut m: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        match m.last().map(String::as_str) {
            Some("mod") => {
                m.pop();
            }
            Some("lib") if m.len() == 1 => m.clear(),
            // The binary, and this checker (a test module, in no layer).
            Some("main" | "layering") if m.len() == 1 => continue,
            _ => {}
        }
        out.insert(m, f);
    }
    out
}

/// The module a path names: its longest prefix that is a file.
fn resolve(files: &BTreeMap<Module, PathBuf>, segs: &[String]) -> Option<Module> {
    (1..=segs.len()).rev().map(|n| segs[..n].to_vec()).find(|m| files.contains_key(m))
}

fn ident_at(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], &s[end..]))
}

/// The module paths one line names (`crate::a::b`, `super::c`, and each item of a `{...}` list after one).
fn paths_in(line: &str, me: &Module) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    for (start, _) in line.char_indices() {
        let rest = &line[start..];
        let (base, mut tail) = if let Some(t) = rest.strip_prefix("crate::") {
            (Vec::new(), t)
        } else if let Some(t) = rest.strip_prefix("super::") {
            let mut base = me[..me.len().saturating_sub(1)].to_vec();
            let mut t = t;
            while let Some(more) = t.strip_prefix("super::") {
                base.pop();
                t = more;
            }
            (base, t)
        } else {
            continue;
        };
        if start > 0
            && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_' || bytes[start - 1] == b':')
        {
            continue;
        }
        let mut segs = base;
        while let Some((id, after)) = ident_at(tail) {
            segs.push(id.to_owned());
            match after.strip_prefix("::") {
                Some(a) if a.starts_with('{') => {
                    let inner = &a[1..a.find('}').unwrap_or(a.len())];
                    for item in inner.split(',') {
                        if let Some((id, _)) = ident_at(item.trim()) {
                            if id != "self" {
                                out.push([segs.clone(), vec![id.to_owned()]].concat());
                            }
                        }
                    }
                    break;
                }
                Some(a) => tail = a,
                None => break,
            }
        }
        out.push(segs);
    }
    out
}

/// File -> the files it imports from.
fn imports(files: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (me, path) in files {
        let text = std::fs::read_to_string(path).expect("read source");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            let reexport = line.trim_start().starts_with("pub use");
            for segs in paths_in(line, me) {
                let Some(target) = resolve(files, &segs) else { continue };
                let own_child = target.starts_with(me);
                if target != *me && !(reexport && own_child) {
                    edges.entry(me.clone()).or_default().insert(target);
                }
            }
        }
    }
    edges
}

/// A circle of files, if there is one (depth-first search).
fn find_circle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        done: &mut BTreeSet<Module>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            return Some(path[i..].iter().cloned().chain([m.clone()]).collect());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|m| visit(m, edges, &mut done, &mut Vec::new()))
}

/// The ```layers block of ARCHITECTURE.md: `N: module module ...`, top-level module -> its layer.
fn declared_layers(architecture: &str) -> BTreeMap<String, u32> {
    let block = architecture.split("```layers").nth(1).expect("docs/ARCHITECTURE.md has a ```layers block");
    let block = block.split("```").next().unwrap_or("");
    let mut out = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (n, mods) = line.split_once(':').expect("a layer line is `N: modules`");
        let n: u32 = n.trim().parse().expect("a layer number");
        for m in mods.split_whitespace() {
            assert!(out.insert(m.to_owned(), n).is_none(), "{m} is in two layers");
        }
    }
    out
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_import_circle_between_files() {
    let files = modules(&root().join("src"));
    let edges = imports(&files);
    if let Some(c) = find_circle(&edges) {
        panic!("import circle: {}", c.iter().map(show).collect::<Vec<_>>().join(" -> "));
    }
}

#[test]
fn imports_go_down_the_declared_layers() {
    let files = modules(&root().join("src"));
    let layers = declared_layers(&std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("read docs"));
    let top: BTreeSet<String> = files.keys().filter_map(|m| m.first().cloned()).collect();
    let undeclared: Vec<&String> = top.iter().filter(|m| !layers.contains_key(*m)).collect();
    assert!(undeclared.is_empty(), "modules missing from ARCHITECTURE's layers: {undeclared:?}");
    let stale: Vec<&String> = layers.keys().filter(|m| !top.contains(*m)).collect();
    assert!(stale.is_empty(), "ARCHITECTURE's layers name modules that do not exist: {stale:?}");
    let mut wrong = Vec::new();
    for (from, tos) in imports(&files) {
        let Some(a) = from.first() else { continue };
        for to in tos {
            let Some(b) = to.first() else { continue };
            if a != b && layers[a] <= layers[b] {
                wrong.push(format!("{} (layer {}) -> {} (layer {})", show(&from), layers[a], show(&to), layers[b]));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that do not go down the layers:\n{}", wrong.join("\n"));
}

#[test]
fn every_file_opens_with_a_line_saying_what_it_is_for() {
    let bare: Vec<String> = modules(&root().join("src"))
        .into_values()
        .chain([root().join("src/main.rs")])
        .filter(|p| !std::fs::read_to_string(p).unwrap_or_default().starts_with("//!"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(bare.is_empty(), "files without a //! first line: {bare:?}");
}

#[test]
fn the_checker_sees_a_circle_and_an_upward_import() {
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let files: BTreeMap<Module, PathBuf> = ["a", "a::b", "c"].iter().map(|s| (m(s), PathBuf::new())).collect();
    assert_eq!(resolve(&files, &m("a::b::Item")), Some(m("a::b")));
    assert_eq!(resolve(&files, &m("a::Item")), Some(m("a")));
    let found = paths_in("use crate::a::{b, Thing}; let x = super::c::f();", &m("a::b"));
    assert!(found.contains(&m("a::b")) && found.contains(&m("a::Thing")) && found.contains(&m("a::c::f")), "{found:?}");
    let edges: BTreeMap<Module, BTreeSet<Module>> =
        [(m("a"), BTreeSet::from([m("c")])), (m("c"), BTreeSet::from([m("a")]))].into_iter().collect();
    assert!(find_circle(&edges).is_some());
    let layers = declared_layers("```layers\n1: a\n0: c\n```");
    assert_eq!(layers["a"], 1);
}
