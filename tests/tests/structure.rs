//! The shape of the code: inside each crate, the files that make it up must not import each other
//! in a circle. A module may use what its ancestors define (a child is part of its parent); every
//! other `use` or path between two files of one crate is an edge, and the edges form no cycle.
//! Test code (`mod tests`, `*_tests.rs`, `conformance`) is left out: it may reach anywhere.
//!
//! The edges come from parsing the sources with `syn`: `use` trees and every path that starts
//! with `crate`, `super` or `self`, or with the name of a child module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module path inside a crate, `[]` for the crate root.
type ModPath = Vec<String>;

/// One file of a crate, as a module.
struct File {
    path: PathBuf,
    syntax: syn::File,
}

/// The crates of the workspace whose library and binary sources are checked.
const CRATES: &[&str] = &["p2p", "repository", "migration", "etcd", "pool", "admin-shell", "tests"];

fn is_test_module(name: &str) -> bool {
    name == "tests" || name.ends_with("_tests") || name == "conformance"
}

/// Every file module under `src` reachable from `root` (`lib.rs` or `main.rs`), by its module path.
fn load(root: &Path) -> BTreeMap<ModPath, File> {
    let mut files = BTreeMap::new();
    let mut todo = vec![(Vec::new(), root.to_path_buf())];
    while let Some((module, path)) = todo.pop() {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let syntax = syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        // Where the children of this module live: beside a crate root or a `mod.rs`, else in a
        // folder named after the file.
        let dir = if module.is_empty() || path.file_name().is_some_and(|n| n == "mod.rs") {
            path.parent().unwrap().to_path_buf()
        } else {
            path.with_extension("")
        };
        for item in &syntax.items {
            let syn::Item::Mod(m) = item else { continue };
            let name = m.ident.to_string();
            if m.content.is_some() || is_test_module(&name) {
                continue;
            }
            let explicit = m.attrs.iter().find(|a| a.path().is_ident("path")).and_then(|a| match &a.meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(dir.join(s.value())),
                    _ => None,
                },
                _ => None,
            });
            let child = explicit.unwrap_or_else(|| {
                let flat = dir.join(format!("{name}.rs"));
                if flat.exists() { flat } else { dir.join(&name).join("mod.rs") }
            });
            let mut child_module = module.clone();
            child_module.push(name);
            todo.push((child_module, child));
        }
        files.insert(module, File { path, syntax });
    }
    files
}

/// Collects the module paths a file refers to, already made absolute.
struct Refs<'a> {
    module: &'a ModPath,
    children: BTreeSet<String>,
    found: BTreeSet<ModPath>,
}

impl Refs<'_> {
    /// `segments` as written; the absolute path it names, if it is inside the crate.
    fn absolute(&self, segments: &[String]) -> Option<ModPath> {
        let (first, rest) = segments.split_first()?;
        match first.as_str() {
            "crate" => Some(rest.to_vec()),
            "self" => Some(self.module.iter().cloned().chain(rest.iter().cloned()).collect()),
            "super" => {
                let mut base = self.module.clone();
                let mut rest = segments;
                while let Some((s, r)) = rest.split_first() {
                    if s != "super" {
                        break;
                    }
                    base.pop();
                    rest = r;
                }
                Some(base.into_iter().chain(rest.iter().cloned()).collect())
            }
            name if self.children.contains(name) => {
                Some(self.module.iter().cloned().chain(segments.iter().cloned()).collect())
            }
            _ => None,
        }
    }

    fn note(&mut self, segments: &[String]) {
        if let Some(path) = self.absolute(segments) {
            self.found.insert(path);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.note(&full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.note(&full);
            }
            syn::UseTree::Glob(_) => self.note(prefix),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        // Inline test modules may reach anywhere.
        if is_test_module(&m.ident.to_string()) {
            return;
        }
        syn::visit::visit_item_mod(self, m);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        // A public re-export of a child is the parent's facade, not a use of it.
        let reexport = !matches!(u.vis, syn::Visibility::Inherited);
        let mut found = std::mem::take(&mut self.found);
        self.use_tree(&mut Vec::new(), &u.tree);
        if reexport {
            let module = self.module.clone();
            self.found.retain(|p| !(p.len() > module.len() && p.starts_with(&module)));
        }
        found.append(&mut self.found);
        self.found = found;
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.note(&segments);
        }
        syn::visit::visit_path(self, p);
    }
}

/// The file-level edges of one crate: module -> the modules (files) it uses, without uses of
/// its own ancestors.
fn edges(files: &BTreeMap<ModPath, File>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut graph = BTreeMap::new();
    for (module, file) in files {
        let children = files
            .keys()
            .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
            .map(|k| k.last().unwrap().clone())
            .collect();
        let mut refs = Refs { module, children, found: BTreeSet::new() };
        refs.visit_file(&file.syntax);
        let targets = refs
            .found
            .iter()
            .filter_map(|path| (0..=path.len()).rev().map(|n| &path[..n]).find(|p| files.contains_key(*p)))
            .filter(|target| *target != module.as_slice() && !module.starts_with(target))
            .map(|t| t.to_vec())
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan's algorithm, iterative
/// enough for a crate's worth of files).
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'g> {
        graph: &'g BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        on_stack: BTreeSet<&'g ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn connect<'g>(s: &mut State<'g>, v: &'g ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            if !s.index.contains_key(w) {
                connect(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            connect(&mut s, v);
        }
    }
    s.found
}

fn show(component: &[ModPath]) -> String {
    component
        .iter()
        .map(|m| if m.is_empty() { "crate".to_string() } else { m.join("::") })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The roots of a crate: its library, its main binary and each binary under `src/bin/`.
fn roots(src: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"].iter().map(|f| src.join(f)).filter(|p| p.exists()).collect();
    // `src/bin/NAME.rs`, or `src/bin/NAME/main.rs` for a binary of several files.
    if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
        for path in bins.filter_map(|e| e.ok()).map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "rs") {
                roots.push(path);
            } else if path.join("main.rs").exists() {
                roots.push(path.join("main.rs"));
            }
        }
    }
    roots.sort();
    roots
}

#[test]
fn no_crate_has_an_import_circle_between_its_files() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut circles = Vec::new();
    for krate in CRATES {
        let src = workspace.join(krate).join("src");
        for root in roots(&src) {
            let files = load(&root);
            for component in cycles(&edges(&files)) {
                let paths: Vec<String> = component.iter().map(|m| files[m].path.display().to_string()).collect();
                circles.push(format!("{krate} ({}): {} [{}]", root.display(), show(&component), paths.join(" ")));
            }
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn a_circle_is_found() {
    let parse = |text: &str| File { path: PathBuf::new(), syntax: syn::parse_file(text).unwrap() };
    let mut files = BTreeMap::new();
    files.insert(vec![], parse("mod a; mod b; mod c;"));
    files.insert(vec!["a".to_string()], parse("use crate::b::thing;"));
    files.insert(vec!["b".to_string()], parse("pub fn thing() { super::c::other() }"));
    files.insert(vec!["c".to_string()], parse("pub fn other() { crate::a::f(); }"));
    let found = cycles(&edges(&files));
    assert_eq!(found.len(), 1);
    assert_eq!(show(&found[0]), "a, b, c");
    // Using an ancestor is not an edge; a public re-export of a child is not a use of it.
    files.insert(vec!["c".to_string()], parse("pub fn other() {}"));
    files.insert(vec![], parse("mod a; mod b; mod c; pub use a::f;"));
    files.insert(vec!["a".to_string()], parse("use crate::b::thing; use super::c;"));
    assert!(cycles(&edges(&files)).is_empty());
}
