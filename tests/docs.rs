//! The documentation holds together: every relative link in README.md,
//! docs/*.md, ARCHITECTURE.md and deploy/README.md reaches an existing file
//! and, with an `#anchor`, a heading of that file (by GitHub's rules), and the
//! README keeps the Quick start that `.ci/run` reads and runs.
//!
//! Plain text only: no server, no part of the library.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[test]
fn every_relative_link_in_the_docs_reaches_a_file_and_a_heading() {
    let root = repository_root();
    let mut broken = Vec::new();
    for file in documents(&root) {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        broken.extend(broken_links(&root, &file, &text));
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn a_missing_file_a_missing_heading_and_a_missing_anchor_are_each_reported() {
    let root = repository_root();
    let text = "# Title\n\n## A heading, with `code` (and more)\n\n\
                [fine](docs/metrics.md) [fine too](#a-heading-with-code-and-more) [folder](deploy/grafana/)\n\
                [fine](docs/security.md#staff-privacy) [web](https://example.com/#nothing)\n\
                [gone](docs/nowhere.md) [no such heading](docs/metrics.md#nowhere)\n\
                [not here](#nowhere) `[in code](nowhere.md)`\n\n\
                ```sh\n[in a block](nowhere.md)\n```\n\n[defined]: docs/gone.md\n";
    let broken = broken_links(&root, &root.join("README.md"), text);
    let targets: Vec<&str> = broken.iter().map(|line| line.rsplit(' ').next().unwrap()).collect();
    assert_eq!(targets, ["docs/nowhere.md", "docs/metrics.md#nowhere", "#nowhere", "docs/gone.md"], "{broken:#?}");
}

#[test]
fn anchors_follow_githubs_rules() {
    for (heading, anchor) in [
        ("Alerts over MQTT (`run` only)", "alerts-over-mqtt-run-only"),
        ("3. InfluxDB", "3-influxdb"),
        ("The simulator's office day", "the-simulators-office-day"),
        ("Limits: what one office can make the daemon remember", "limits-what-one-office-can-make-the-daemon-remember"),
        ("Measurement `ticket`: one point per closed segment", "measurement-ticket-one-point-per-closed-segment"),
        ("A TLS listener (`mqtts://`)", "a-tls-listener-mqtts"),
        ("Guarantees, and their limits", "guarantees-and-their-limits"),
        ("[Linked](elsewhere.md) snake_case", "linked-snake_case"),
    ] {
        assert_eq!(anchor_of(heading), anchor, "{heading}");
    }
    let anchors = anchors_of("# Same\n## Same\n```sh\n# Not a heading\n```\n### Same\n");
    assert_eq!(anchors, BTreeSet::from(["same".to_string(), "same-1".to_string(), "same-2".to_string()]));
}

/// `.ci/run` runs the first command of the first ```sh block of the
/// README's "## Quick start" section, and ends with the test command.
#[test]
fn the_quick_start_holds_the_demo_first_and_the_test_command_that_ci_runs() {
    let root = repository_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut in_quick_start = false;
    let mut block: Option<Vec<&str>> = None;
    for line in readme.lines() {
        if line.starts_with("## ") {
            if block.is_some() {
                break;
            }
            in_quick_start = line == "## Quick start";
        } else if in_quick_start && block.is_none() && line.trim_end() == "```sh" {
            block = Some(Vec::new());
        } else if let Some(lines) = &mut block {
            if line.starts_with("```") {
                break;
            }
            lines.push(line);
        }
    }
    let block = block.expect("a ```sh block in README.md's \"## Quick start\"");
    let commands: Vec<&str> =
        block.iter().copied().filter(|line| !line.trim().is_empty() && !line.starts_with('#')).collect();
    assert_eq!(commands, ["cargo run --release -- demo", "bash scripts/test.sh"]);
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert_eq!(
        ci.trim_end().lines().last(),
        Some("bash scripts/test.sh"),
        ".ci/run ends with the README's test command"
    );
}

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents whose links are checked.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        ["README.md", "ARCHITECTURE.md", "deploy/README.md"].iter().map(|path| root.join(path)).collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "no docs/*.md");
    files.extend(docs);
    files
}

/// Each link of `text` (the contents of `file`) that reaches nothing, as
/// `file:line: target`.
fn broken_links(root: &Path, file: &Path, text: &str) -> Vec<String> {
    let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
    let folder = file.parent().unwrap();
    let mut broken = Vec::new();
    for (number, target) in links(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let (resolved, contents) = if path.is_empty() {
            (file.to_path_buf(), Some(text.to_string()))
        } else {
            let resolved = folder.join(path);
            let contents = std::fs::read_to_string(&resolved).ok();
            (resolved, contents)
        };
        let reached = match (anchor, contents) {
            _ if !resolved.exists() => false,
            (None, _) => true,
            (Some(anchor), Some(contents)) => {
                resolved.extension().is_some_and(|extension| extension == "md")
                    && anchors_of(&contents).contains(anchor)
            }
            (Some(_), None) => false,
        };
        if !reached {
            broken.push(format!("{shown}:{number}: {target}"));
        }
    }
    broken
}

/// The targets of the inline links (`[text](target)`) and link definitions
/// (`[name]: target`) of markdown text, with their line numbers; code blocks
/// and code spans hold none.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line) in prose_lines(text) {
        let line = without_code_spans(line);
        if let Some((_, definition)) = line.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
            if let Some(definition) = definition.strip_prefix(':') {
                if let Some(target) = definition.split_whitespace().next() {
                    found.push((index + 1, target.to_string()));
                }
                continue;
            }
        }
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            found.push((index + 1, target.trim_matches(|c| c == '<' || c == '>').to_string()));
            rest = &after[end..];
        }
    }
    found
}

/// The lines outside fenced code blocks, with their index.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((index, line));
        }
    }
    lines
}

/// `line` without its code spans (a run of backticks up to the next run of
/// the same length).
fn without_code_spans(line: &str) -> String {
    let mut kept = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        kept.push_str(&rest[..start]);
        let ticks = rest[start..].len() - rest[start..].trim_start_matches('`').len();
        let fence = &rest[start..start + ticks];
        let inside = &rest[start + ticks..];
        match inside.find(fence) {
            Some(end) => rest = &inside[end + ticks..],
            None => {
                kept.push_str(fence);
                rest = inside;
            }
        }
    }
    kept.push_str(rest);
    kept
}

/// The anchors GitHub gives the headings of markdown text: a repeated one
/// gets `-1`, `-2`, ….
fn anchors_of(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let anchor = anchor_of(line[hashes..].trim());
        let mut unique = anchor.clone();
        let mut repeat = 0;
        while anchors.contains(&unique) {
            repeat += 1;
            unique = format!("{anchor}-{repeat}");
        }
        anchors.insert(unique);
    }
    anchors
}

/// GitHub's anchor of a heading: its text as shown (a link's text, not its
/// target), lowercased, every character but letters, digits, `_`, `-` and
/// spaces removed, spaces made `-`.
fn anchor_of(heading: &str) -> String {
    let mut shown = String::new();
    let mut rest = heading;
    while let Some(start) = rest.find("](") {
        shown.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        rest = after.find(')').map_or("", |end| &after[end + 1..]);
    }
    shown.push_str(rest);
    shown
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}
