//! No import circle among the modules of a crate (STYLE.md: "No import circles:
//! configuration is a leaf that adapters read, never the other way round").
//!
//! Read from the source, nothing built: each module file reached from a crate
//! root through `mod name;`, with comments, literals and everything under
//! `#[cfg(test)]` left out (test code is a leaf: nothing imports it). Every path
//! that names a module of the crate is an import of the module it lands in (its
//! longest prefix that is a module): `use crate::a::{b, c::d}`, `super::x`,
//! `self::x`, a child module's name (`task::X` after `mod task;`), and paths
//! written inline (`crate::secret::inspect(..)`), not only `use` lines. A
//! `mod name;` declaration alone is no import.
//!
//! A module and the modules inside it are one room: what a submodule takes
//! from its parent (`super::X`) and the parent from it (`pub use task::X`) are
//! not circles. Between rooms, an import counts at every level where the two
//! sides part: `config` taking from `mqtt::tls` is `config -> mqtt` among the
//! crate's top-level modules, `sink::task` taking from `sink::dead_letter` is
//! `sink::task -> sink::dead_letter` among `sink`'s. A circle is a set of
//! sibling modules each of which reaches the others that way; a failure names
//! each one (the shortest way round from its first module), then every import
//! that ties it with the names taken.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate roots of this repository whose modules are checked.
const CRATE_ROOTS: [&str; 4] = ["src/lib.rs", "src/main.rs", "src/bin/queuewatch-load/main.rs", "servers/src/lib.rs"];

#[test]
fn no_module_imports_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for crate_root in CRATE_ROOTS {
        let graph = ModuleGraph::read(&root.join(crate_root));
        for circle in graph.circles() {
            found.push(format!("{crate_root}: {circle}"));
        }
    }
    assert!(found.is_empty(), "{} import circle(s):\n{}", found.len(), found.join("\n"));
}

#[test]
fn the_reader_finds_every_kind_of_import_and_names_the_circles() {
    let sources = [
        (
            "lib.rs",
            "mod config;\nmod sink;\nmod tracker;\n/// [`crate::sink`] in a comment is no import\npub fn f() {}\n",
        ),
        (
            "config.rs",
            "pub fn parse() { let _ = crate::sink::tls::check(\"crate::tracker\"); }\n\
             #[cfg(test)]\nmod tests { use crate::tracker::Note; }\n",
        ),
        ("sink/mod.rs", "mod task;\nmod tls;\npub use task::Sink;\npub struct Error;\n"),
        ("sink/task.rs", "use super::{tls::{self, Pem}, Error as _};\npub struct Sink;\n"),
        ("sink/tls.rs", "use crate::{config::parse, sink::task};\n"),
        ("tracker.rs", "mod held;\npub use held::Held;\n/* crate::config */\npub struct Note;\n"),
        (
            "tracker/held.rs",
            "use super::Note;\npub struct Held<'a>(&'a str, char);\n\
             const QUOTE: char = '\"';\nconst RAW: &str = r#\"crate::sink\"#;\n",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in sources {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    let circles = ModuleGraph::read(&dir.path().join("lib.rs")).circles();
    assert_eq!(
        circles,
        [
            "config -> sink -> config\n    config -> sink::tls: check\n    sink::tls -> config: parse",
            "sink::task -> sink::tls -> sink::task\n    sink::task -> sink::tls: Pem, tls\n    sink::tls -> sink::task: task",
        ]
    );
}

/// Modules (`a::b`, the crate root `crate`) and the names each takes from another.
struct ModuleGraph {
    modules: BTreeSet<String>,
    imports: BTreeMap<(String, String), BTreeSet<String>>,
}

impl ModuleGraph {
    fn read(crate_root: &Path) -> ModuleGraph {
        let mut files = Vec::new();
        collect_files(crate_root, &[], true, &mut files);
        let mut modules = BTreeSet::new();
        let mut children: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            for (module, child) in file.declared_modules() {
                children.entry(module.clone()).or_default().insert(child);
            }
            modules.insert(name(&file.module));
            for (module, child) in file.declared_modules() {
                modules.insert(name(&[module, vec![child]].concat()));
            }
        }
        let mut imports: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            for (module, path) in file.paths() {
                let Some(absolute) = absolute_path(&module, &path, &children) else { continue };
                let target_len =
                    (0..=absolute.len()).rev().find(|len| modules.contains(&name(&absolute[..*len]))).unwrap_or(0);
                let (target, from) = (name(&absolute[..target_len]), name(&module));
                if target != from {
                    let taken = absolute.get(target_len).or(absolute.last()).cloned().unwrap_or_default();
                    imports.entry((from, target)).or_default().insert(taken);
                }
            }
        }
        ModuleGraph { modules, imports }
    }

    /// Each circle as `a -> b -> a`, then every import that ties it.
    fn circles(&self) -> Vec<String> {
        // Each import between rooms, as an arrow between the siblings where its two sides part.
        let mut ties: BTreeMap<(String, String), Vec<(&String, &String)>> = BTreeMap::new();
        for (from, to) in self.imports.keys() {
            let (from_path, to_path): (Vec<&str>, Vec<&str>) = (segments(from), segments(to));
            let shared = from_path.iter().zip(&to_path).take_while(|(a, b)| a == b).count();
            if shared == from_path.len() || shared == to_path.len() {
                continue; // a module and one inside it
            }
            let arrow = (name_of(&from_path[..=shared]), name_of(&to_path[..=shared]));
            ties.entry(arrow).or_default().push((from, to));
        }
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in ties.keys() {
            next.entry(from).or_default().push(to);
        }
        strongly_connected(&self.modules, &next)
            .into_iter()
            .filter(|members| members.len() > 1)
            .map(|members| {
                let mut text = shortest_cycle(members[0], &members, &next).join(" -> ");
                for ((from, to), imports) in &ties {
                    if members.contains(&from.as_str()) && members.contains(&to.as_str()) {
                        for import in imports {
                            let names: Vec<&str> = self.imports[&(import.0.clone(), import.1.clone())]
                                .iter()
                                .map(String::as_str)
                                .collect();
                            text.push_str(&format!("\n    {} -> {}: {}", import.0, import.1, names.join(", ")));
                        }
                    }
                }
                text
            })
            .collect()
    }
}

/// A module's name split into its segments (none for the crate root).
fn segments(module: &str) -> Vec<&str> {
    if module == "crate" {
        Vec::new()
    } else {
        module.split("::").collect()
    }
}

fn name_of(segments: &[&str]) -> String {
    name(&segments.iter().map(|segment| segment.to_string()).collect::<Vec<_>>())
}

/// Tarjan's strongly connected components, each sorted, in the order of their first module.
fn strongly_connected<'a>(modules: &'a BTreeSet<String>, next: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    struct Walk<'a, 'b> {
        next: &'b BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a, '_> {
        fn visit(&mut self, module: &'a str) {
            let number = self.index.len();
            self.index.insert(module, number);
            self.low.insert(module, number);
            self.stack.push(module);
            self.on_stack.insert(module);
            for &to in self.next.get(module).map(Vec::as_slice).unwrap_or_default() {
                if !self.index.contains_key(to) {
                    self.visit(to);
                    let low = self.low[module].min(self.low[to]);
                    self.low.insert(module, low);
                } else if self.on_stack.contains(to) {
                    let low = self.low[module].min(self.index[to]);
                    self.low.insert(module, low);
                }
            }
            if self.low[module] == self.index[module] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member);
                    if member == module {
                        break;
                    }
                }
                component.sort_unstable();
                self.components.push(component);
            }
        }
    }
    let mut walk = Walk {
        next,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for module in modules {
        if !walk.index.contains_key(module.as_str()) {
            walk.visit(module);
        }
    }
    walk.components.sort();
    walk.components
}

/// The shortest way from `start` back to itself within `members` (breadth first).
fn shortest_cycle<'a>(start: &'a str, members: &[&'a str], next: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<&'a str> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut further = Vec::new();
        for module in frontier {
            for &to in next.get(module).map(Vec::as_slice).unwrap_or_default() {
                if !members.contains(&to) || came_from.contains_key(to) {
                    continue;
                }
                came_from.insert(to, module);
                if to == start {
                    let mut cycle = vec![start];
                    let mut at = module;
                    while at != start {
                        cycle.push(at);
                        at = came_from[at];
                    }
                    cycle.push(start);
                    cycle.reverse();
                    return cycle;
                }
                further.push(to);
            }
        }
        frontier = further;
    }
    unreachable!("{start} is in a strongly connected component of more than one module")
}

/// A module's name as the report gives it: `a::b`, or `crate` for the crate root.
fn name(module: &[String]) -> String {
    if module.is_empty() {
        String::from("crate")
    } else {
        module.join("::")
    }
}

/// `path` as written in `module`, from the crate root, when it starts at a module of the crate.
fn absolute_path(
    module: &[String],
    path: &[String],
    children: &BTreeMap<Vec<String>, BTreeSet<String>>,
) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        name if children.get(module).is_some_and(|names| names.contains(name)) => {
            let mut base = module.to_vec();
            base.push(name.to_string());
            base
        }
        _ => return None,
    };
    let mut rest = rest.iter().peekable();
    if first == "super" {
        while rest.peek().is_some_and(|segment| *segment == "super") {
            base.pop()?;
            rest.next();
        }
    }
    base.extend(rest.filter(|segment| *segment != "self").cloned());
    Some(base)
}

/// One module file: its module path and its tokens, test code left out.
struct ModuleFile {
    module: Vec<String>,
    tokens: Vec<Token>,
}

fn collect_files(file: &Path, module: &[String], owns_its_folder: bool, files: &mut Vec<ModuleFile>) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
    let tokens = without_test_code(tokenize(&text));
    let folder: PathBuf = if owns_its_folder { file.parent().unwrap().to_path_buf() } else { file.with_extension("") };
    let parsed = ModuleFile { module: module.to_vec(), tokens };
    for (parent, child) in parsed.declared_files() {
        let mut child_folder = folder.clone();
        for segment in &parent[module.len()..] {
            child_folder.push(segment);
        }
        let mut child_module = parent.clone();
        child_module.push(child.clone());
        let flat = child_folder.join(format!("{child}.rs"));
        if flat.exists() {
            collect_files(&flat, &child_module, false, files);
        } else {
            collect_files(&child_folder.join(&child).join("mod.rs"), &child_module, true, files);
        }
    }
    files.push(parsed);
}

impl ModuleFile {
    /// Every `mod name;` and `mod name { .. }`, with the module it is declared in.
    fn declared_modules(&self) -> Vec<(Vec<String>, String)> {
        let mut declared = Vec::new();
        self.walk(|module, tokens, at| {
            if let [Token::Ident(keyword), Token::Ident(name), Token::Punct(';' | '{'), ..] = &tokens[at..] {
                if keyword == "mod" {
                    declared.push((module.to_vec(), name.clone()));
                }
            }
        });
        declared
    }

    /// Only the `mod name;` declarations: those with a file of their own.
    fn declared_files(&self) -> Vec<(Vec<String>, String)> {
        let mut declared = Vec::new();
        self.walk(|module, tokens, at| {
            if let [Token::Ident(keyword), Token::Ident(name), Token::Punct(';'), ..] = &tokens[at..] {
                if keyword == "mod" {
                    declared.push((module.to_vec(), name.clone()));
                }
            }
        });
        declared
    }

    /// Every path written (`use` trees expanded), with the module it is written in.
    fn paths(&self) -> Vec<(Vec<String>, Vec<String>)> {
        let mut paths = Vec::new();
        let mut inside_use_until = 0;
        self.walk(|module, tokens, at| {
            if at < inside_use_until {
                return;
            }
            if matches!(&tokens[at], Token::Ident(keyword) if keyword == "use") {
                let (trees, end) = use_tree(tokens, at + 1, &[]);
                inside_use_until = end;
                paths.extend(trees.into_iter().map(|path| (module.to_vec(), path)));
                return;
            }
            let continues_a_path = at > 0 && tokens[at - 1] == Token::PathSep;
            if let (Token::Ident(first), false) = (&tokens[at], continues_a_path) {
                let mut path = vec![first.clone()];
                let mut next = at + 1;
                while let [Token::PathSep, Token::Ident(segment), ..] = &tokens[next..] {
                    path.push(segment.clone());
                    next += 2;
                }
                if path.len() > 1 {
                    paths.push((module.to_vec(), path));
                }
            }
        });
        paths
    }

    /// Calls `visit` at every token with the module (inline modules included) it is in.
    fn walk(&self, mut visit: impl FnMut(&[String], &[Token], usize)) {
        let mut module = self.module.clone();
        // The brace depths at which the inline modules entered end.
        let mut inline_ends = Vec::new();
        let mut depth = 0usize;
        for at in 0..self.tokens.len() {
            visit(&module, &self.tokens, at);
            match &self.tokens[at..] {
                [Token::Ident(keyword), Token::Ident(name), Token::Punct('{'), ..] if keyword == "mod" => {
                    module.push(name.clone());
                    inline_ends.push(depth + 1);
                }
                [Token::Punct('{'), ..] => depth += 1,
                [Token::Punct('}'), ..] => {
                    if inline_ends.last() == Some(&depth) {
                        inline_ends.pop();
                        module.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                _ => {}
            }
        }
    }
}

/// The paths of a `use` tree starting at `at`, and the index after it.
fn use_tree(tokens: &[Token], mut at: usize, prefix: &[String]) -> (Vec<Vec<String>>, usize) {
    let mut paths = Vec::new();
    let mut path = prefix.to_vec();
    if tokens.get(at) == Some(&Token::PathSep) {
        at += 1; // `use ::name`: an outside crate
        path.push(String::from("::"));
    }
    loop {
        match tokens.get(at) {
            Some(Token::Ident(segment)) if segment == "as" => at += 2,
            Some(Token::Ident(segment)) => {
                path.push(segment.clone());
                at += 1;
            }
            Some(Token::PathSep) => at += 1,
            Some(Token::Punct('*')) => at += 1,
            Some(Token::Punct('{')) => {
                at += 1;
                loop {
                    let (inner, end) = use_tree(tokens, at, &path);
                    paths.extend(inner);
                    at = end;
                    match tokens.get(at) {
                        Some(Token::Punct(',')) => at += 1,
                        Some(Token::Punct('}')) => {
                            at += 1;
                            break;
                        }
                        _ => break,
                    }
                    if tokens.get(at) == Some(&Token::Punct('}')) {
                        at += 1;
                        break;
                    }
                }
                return (paths, at);
            }
            _ => {
                if path.len() > prefix.len() {
                    paths.push(path);
                }
                if tokens.get(at) == Some(&Token::Punct(';')) {
                    at += 1;
                }
                return (paths, at);
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
    Literal,
}

/// Rust source as identifiers, `::` and punctuation, comments and literals left out.
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at_ = |index: usize| chars.get(index).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if c.is_whitespace() {
            at += 1;
        } else if c == '/' && at_(at + 1) == '/' {
            while at < chars.len() && chars[at] != '\n' {
                at += 1;
            }
        } else if c == '/' && at_(at + 1) == '*' {
            let mut nesting = 0;
            loop {
                if at >= chars.len() {
                    break;
                } else if chars[at] == '/' && at_(at + 1) == '*' {
                    nesting += 1;
                    at += 2;
                } else if chars[at] == '*' && at_(at + 1) == '/' {
                    nesting -= 1;
                    at += 2;
                    if nesting == 0 {
                        break;
                    }
                } else {
                    at += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&chars, at) {
            tokens.push(Token::Literal);
            at = end;
        } else if c == '"' || ((c == 'b' || c == 'c') && at_(at + 1) == '"') {
            at += if c == '"' { 1 } else { 2 };
            while at < chars.len() && chars[at] != '"' {
                at += if chars[at] == '\\' { 2 } else { 1 };
            }
            at += 1;
            tokens.push(Token::Literal);
        } else if c == '\'' || (c == 'b' && at_(at + 1) == '\'') {
            let quote = if c == '\'' { at } else { at + 1 };
            if at_(quote + 1) == '\\' {
                at = quote + 3;
                while at < chars.len() && chars[at] != '\'' {
                    at += 1;
                }
                at += 1;
                tokens.push(Token::Literal);
            } else if at_(quote + 2) == '\'' {
                at = quote + 3;
                tokens.push(Token::Literal);
            } else {
                at = quote + 1; // a lifetime: its name follows as an identifier
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = at;
            if c == 'r' && at_(at + 1) == '#' {
                at += 2; // a raw identifier
            }
            let name_start = at;
            while at < chars.len() && (chars[at].is_alphanumeric() || chars[at] == '_') {
                at += 1;
            }
            let name: String = chars[name_start.max(start)..at].iter().collect();
            tokens.push(Token::Ident(name));
        } else if c == ':' && at_(at + 1) == ':' {
            tokens.push(Token::PathSep);
            at += 2;
        } else {
            tokens.push(Token::Punct(c));
            at += 1;
        }
    }
    tokens
}

/// Where a raw string (`r"…"`, `br#"…"#`) starting at `at` ends, if one does.
fn raw_string_end(chars: &[char], at: usize) -> Option<usize> {
    let mut next = at;
    if chars.get(next) == Some(&'b') || chars.get(next) == Some(&'c') {
        next += 1;
    }
    if chars.get(next) != Some(&'r') {
        return None;
    }
    if at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_') {
        return None;
    }
    next += 1;
    let hashes = chars[next..].iter().take_while(|c| **c == '#').count();
    next += hashes;
    if chars.get(next) != Some(&'"') {
        return None;
    }
    next += 1;
    while next < chars.len() {
        if chars[next] == '"' && chars[next + 1..].iter().take(hashes).filter(|c| **c == '#').count() == hashes {
            return Some(next + 1 + hashes);
        }
        next += 1;
    }
    Some(chars.len())
}

/// The tokens without the items (or statements) under `#[cfg(test)]` or
/// `#[cfg(all(test, ..))]`; a file under `#![cfg(test)]` is left out whole.
fn without_test_code(tokens: Vec<Token>) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut at = 0;
    while at < tokens.len() {
        let Some((inner, is_test, after)) = attribute(&tokens, at) else {
            kept.push(tokens[at].clone());
            at += 1;
            continue;
        };
        if !is_test {
            kept.extend_from_slice(&tokens[at..after]);
            at = after;
            continue;
        }
        if inner {
            return Vec::new();
        }
        at = after;
        while let Some((_, _, after)) = attribute(&tokens, at) {
            at = after;
        }
        // The item: up to `;` or `,` outside brackets, or the close of its body.
        let mut depth = 0usize;
        while at < tokens.len() {
            let token = &tokens[at];
            at += 1;
            match token {
                Token::Punct('(' | '[' | '{') => depth += 1,
                Token::Punct(')' | ']' | '}') => {
                    if depth == 0 {
                        at -= 1; // the enclosing item's close: keep it
                        break;
                    }
                    depth -= 1;
                    if depth == 0 && *token == Token::Punct('}') {
                        break;
                    }
                }
                Token::Punct(';' | ',') if depth == 0 => break,
                _ => {}
            }
        }
    }
    kept
}

/// The attribute at `at`: whether it is inner (`#!`), whether it is a test
/// `cfg`, and the index after it.
fn attribute(tokens: &[Token], at: usize) -> Option<(bool, bool, usize)> {
    if tokens.get(at) != Some(&Token::Punct('#')) {
        return None;
    }
    let inner = tokens.get(at + 1) == Some(&Token::Punct('!'));
    let open = if inner { at + 2 } else { at + 1 };
    if tokens.get(open) != Some(&Token::Punct('[')) {
        return None;
    }
    let mut depth = 0usize;
    let mut end = open;
    while end < tokens.len() {
        match tokens[end] {
            Token::Punct('[') => depth += 1,
            Token::Punct(']') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        end += 1;
    }
    let body = &tokens[open + 1..end];
    let ident = |token: &Token, name: &str| matches!(token, Token::Ident(text) if text == name);
    let is_test = match body {
        [cfg, Token::Punct('('), test, Token::Punct(')')] => ident(cfg, "cfg") && ident(test, "test"),
        [cfg, Token::Punct('('), all, Token::Punct('('), rest @ ..] => {
            ident(cfg, "cfg")
                && ident(all, "all")
                && rest.iter().any(|token| ident(token, "test"))
                && !rest.iter().any(|token| ident(token, "not") || ident(token, "any"))
        }
        _ => false,
    };
    Some((inner, is_test, end + 1))
}
