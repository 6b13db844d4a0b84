//! The configuration reference, docs/configuration.md, cannot drift from the
//! parser: every key the parser asks for is in its table, and every key the
//! table names is one the parser asks for.
//!
//! The parser's keys are those it looks up (`Section::get`, which also marks
//! them as known, so that the rest are "unknown key"), recorded while it reads
//! a config that holds every section. Names of offices and services are
//! written `<id>` and `<service>`, as the reference writes them.

use std::cell::RefCell;
use std::collections::BTreeSet;

use super::Config;

const REFERENCE: &str = include_str!("../../docs/configuration.md");

/// Every section and table the parser reads, with no values: the parser then
/// looks up every key it knows.
const EVERY_SECTION: &str = "\
    [mqtt]\n[influxdb]\n[tracking]\n[sla.services.service-x]\n\
    [offices]\nonly_configured = false\n[offices.office-x.sla.services.service-x]\n\
    [alerts]\n[storage]\n[limits]\n[http]\n[privacy]\n";

thread_local! {
    /// The keys looked up on this thread while recording.
    static ASKED: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
}

/// Called by the parser with the dotted key of each lookup.
pub(super) fn asked(key: &str) {
    ASKED.with(|asked| {
        if let Some(keys) = asked.borrow_mut().as_mut() {
            keys.insert(key.to_string());
        }
    });
}

#[test]
fn every_key_the_parser_asks_for_is_in_the_configuration_reference() {
    let missing = undocumented(&parser_keys(), &documented_keys(REFERENCE));
    assert!(missing.is_empty(), "keys the parser accepts that docs/configuration.md does not list: {missing:?}");
}

#[test]
fn every_key_of_the_configuration_reference_is_one_the_parser_accepts() {
    let unknown = unaccepted(&parser_keys(), &documented_keys(REFERENCE));
    assert!(unknown.is_empty(), "keys docs/configuration.md lists that the parser does not accept: {unknown:?}");
}

#[test]
fn a_key_left_out_of_the_reference_or_made_up_in_it_is_caught() {
    let parser = parser_keys();
    let row_of = |key: &str| REFERENCE.lines().find(|line| line.starts_with(&format!("| `{key}`"))).unwrap();
    let without = REFERENCE
        .replace(&format!("{}\n", row_of("storage.journal_segment_bytes")), "")
        .replace(row_of("offices.<id>.hours"), "| `offices.<id>.hours` | none | |");
    assert_eq!(
        undocumented(&parser, &documented_keys(&without)),
        ["offices.<id>.days", "storage.journal_segment_bytes"]
    );
    let made_up = REFERENCE.replace(
        row_of("mqtt.keep_alive"),
        "| `mqtt.keep_alive`, `mqtt.keepalive` | | |\n| `sla.services.<service>.idle_target` | | |",
    );
    assert_eq!(
        unaccepted(&parser, &documented_keys(&made_up)),
        ["mqtt.keepalive", "sla.services.<service>.idle_target"]
    );
    // The parser's side of the record: a config with every section.
    for key in
        ["mqtt.url", "offices.only_configured", "offices.<id>.sla.services.<service>.wait_target", "shutdown_timeout"]
    {
        assert!(parser.contains(key), "{key} not recorded: {parser:?}");
    }
}

/// The keys the parser looks up in a config with every section, offices and
/// services named as the reference names them.
fn parser_keys() -> BTreeSet<String> {
    ASKED.with(|asked| *asked.borrow_mut() = Some(BTreeSet::new()));
    let _ = Config::parse(EVERY_SECTION);
    let keys = ASKED.with(|asked| asked.borrow_mut().take()).unwrap_or_default();
    keys.iter()
        .map(|key| {
            key.replace("offices.office-x.", "offices.<id>.").replace(".services.service-x.", ".services.<service>.")
        })
        .collect()
}

/// The keys of the reference's table (`| key | default | meaning |`): each
/// backquoted name of a row's first cell; one that starts with `.` belongs to
/// the table of the row's first name (`offices.<id>.name`, `.region`).
fn documented_keys(reference: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_table = false;
    for line in reference.lines() {
        if line.starts_with("| key |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let first_cell = line.split('|').nth(1).unwrap_or("");
        let names: Vec<&str> = first_cell.split('`').skip(1).step_by(2).collect();
        let Some(first) = names.first() else { continue };
        let table = first.rsplit_once('.').map_or("", |(table, _)| table);
        for name in names {
            keys.insert(if name.starts_with('.') { format!("{table}{name}") } else { name.to_string() });
        }
    }
    keys
}

/// The parser's keys the reference leaves out. A table's keys (the sections
/// themselves) need no row, and an office's `sla` keys are those of `[sla]`,
/// as the reference says.
fn undocumented(parser: &BTreeSet<String>, documented: &BTreeSet<String>) -> Vec<String> {
    let is_table = |key: &String| parser.iter().any(|other| other.starts_with(&format!("{key}.")));
    parser
        .iter()
        .filter(|key| !is_table(key) && !documented.contains(*key))
        .filter(|key| {
            let as_global = key.strip_prefix("offices.<id>.").filter(|rest| rest.starts_with("sla."));
            !as_global.is_some_and(|global| documented.contains(global) && documented.contains("offices.<id>.sla"))
        })
        .cloned()
        .collect()
}

/// The reference's keys the parser does not ask for, as a key or as a table
/// it reads keys in.
fn unaccepted(parser: &BTreeSet<String>, documented: &BTreeSet<String>) -> Vec<String> {
    documented
        .iter()
        .filter(|key| !parser.contains(*key) && !parser.iter().any(|other| other.starts_with(&format!("{key}."))))
        .cloned()
        .collect()
}
