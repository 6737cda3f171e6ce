//! `docs/configuration.md` documents every key `gateway.toml` accepts, and
//! only those.
//!
//! The code's keys come from the serde types themselves, with no list to keep
//! by hand: every raw config table refuses unknown keys
//! (`deny_unknown_fields`), and serde's refusal of a probe key names every key
//! the table accepts (``unknown field `probe`, expected one of `a`, `b` ``).
//! A key that refuses the probe the same way when given a table (or an array
//! of tables) is itself a table, and is probed in turn.
//!
//! The documented keys come from the page's convention: a heading
//! ``### `[table]` `` (or ``### `[[table]]` `` for an array of tables)
//! followed by a markdown table whose rows start with one key in backticks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use authgate::config::Config;

const PROBE: &str = "zz_no_such_key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Table,
    ArrayOfTables,
}

/// Dotted path (`""` for the file itself) to the table's kind and keys.
type Tables = BTreeMap<String, (Kind, BTreeSet<String>)>;

fn wrap(kind: Kind, value: String) -> String {
    match kind {
        Kind::Table => value,
        Kind::ArrayOfTables => format!("[{value}]"),
    }
}

/// A file putting the probe key in the table at `path`, written inline so
/// that tables inside arrays of tables need no special case.
fn probe_document(path: &[(String, Kind)]) -> String {
    fn value(path: &[(String, Kind)]) -> String {
        match path.split_first() {
            None => format!("{{ {PROBE} = 1 }}"),
            Some(((key, kind), rest)) => format!("{{ {key} = {} }}", wrap(*kind, value(rest))),
        }
    }
    match path.split_first() {
        None => format!("{PROBE} = 1"),
        Some(((key, kind), rest)) => format!("{key} = {}", wrap(*kind, value(rest))),
    }
}

/// The keys of the table at `path`, when it is one: serde's refusal of the
/// probe lists them (`expected `a``, `expected `a` or `b``,
/// `expected one of `a`, `b`, ...``).
fn keys_of(path: &[(String, Kind)]) -> Option<BTreeSet<String>> {
    let error = Config::parse(Path::new("gateway.toml"), &probe_document(path)).err()?;
    let message = &error.problems.first()?.message;
    let expected = message.strip_prefix(&format!("unknown field `{PROBE}`, "))?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

fn dotted(path: &[(String, Kind)]) -> String {
    path.iter()
        .map(|(key, _)| key.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

fn code_tables() -> Tables {
    let mut tables = Tables::new();
    let mut pending: Vec<Vec<(String, Kind)>> = vec![Vec::new()];
    while let Some(path) = pending.pop() {
        let keys = keys_of(&path).unwrap_or_else(|| {
            panic!(
                "probing `{}` no longer lists its keys: {:?}",
                dotted(&path),
                Config::parse(Path::new("gateway.toml"), &probe_document(&path)).err()
            )
        });
        for key in &keys {
            for kind in [Kind::Table, Kind::ArrayOfTables] {
                let mut child = path.clone();
                child.push((key.clone(), kind));
                if keys_of(&child).is_some() {
                    pending.push(child);
                    break;
                }
            }
        }
        let kind = path.last().map_or(Kind::Table, |(_, kind)| *kind);
        tables.insert(dotted(&path), (kind, keys));
    }
    tables
}

/// The tables `docs/configuration.md` documents; the file itself (`""`) has
/// the top-level tables as its keys.
fn documented_tables(page: &str) -> Tables {
    let mut tables = Tables::new();
    let mut lines = page.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(heading) = line
            .strip_prefix("### `[")
            .and_then(|h| h.strip_suffix("]`"))
        else {
            continue;
        };
        let (name, kind) = match heading.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(name) => (name, Kind::ArrayOfTables),
            None => (heading, Kind::Table),
        };
        let mut keys = BTreeSet::new();
        while let Some(line) = lines.next_if(|l| !l.starts_with("## ") && !l.starts_with("### ")) {
            if !line.starts_with('|') {
                if keys.is_empty() {
                    continue;
                }
                break;
            }
            let first = line.split('|').nth(1).unwrap_or("").trim();
            if first == "key" || first.starts_with("---") {
                continue;
            }
            let key = first
                .strip_prefix('`')
                .and_then(|k| k.strip_suffix('`'))
                .filter(|k| !k.contains('`'))
                .unwrap_or_else(|| {
                    panic!("under `[{heading}]`, a row must start with one `key`: {line}")
                });
            keys.insert(key.to_owned());
        }
        if !name.contains('.') {
            tables
                .entry(String::new())
                .or_insert((Kind::Table, BTreeSet::new()))
                .1
                .insert(name.to_owned());
        }
        assert!(
            tables.insert(name.to_owned(), (kind, keys)).is_none(),
            "`{name}` is documented twice"
        );
    }
    tables
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let page = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let code = code_tables();
    let docs = documented_tables(&page);
    let mut problems = Vec::new();
    let name = |table: &str| match code.get(table).or(docs.get(table)) {
        _ if table.is_empty() => "the top level (a `### `[table]`` heading each)".to_owned(),
        Some((Kind::ArrayOfTables, _)) => format!("`[[{table}]]`"),
        _ => format!("`[{table}]`"),
    };
    for (table, (kind, keys)) in &code {
        let Some((doc_kind, doc_keys)) = docs.get(table) else {
            problems.push(format!("{} is not documented", name(table)));
            continue;
        };
        if kind != doc_kind {
            let heading = |kind: &Kind| match kind {
                Kind::Table => format!("`[{table}]`"),
                Kind::ArrayOfTables => format!("`[[{table}]]`"),
            };
            problems.push(format!(
                "`{table}` is {} in the code, {} in the docs",
                heading(kind),
                heading(doc_kind)
            ));
        }
        for key in keys.difference(doc_keys) {
            problems.push(format!("{}: `{key}` is not documented", name(table)));
        }
        for key in doc_keys.difference(keys) {
            problems.push(format!(
                "{}: `{key}` is documented but the code has no such key",
                name(table)
            ));
        }
    }
    for table in docs.keys().filter(|t| !code.contains_key(*t)) {
        problems.push(format!(
            "{} is documented but the code has no such table",
            name(table)
        ));
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and the config types disagree:\n  {}",
        problems.join("\n  ")
    );
    // Guards the probe itself: a change in serde's wording must not make
    // the comparison vacuous.
    assert!(code[""].1.contains("server") && code["server.tls"].1.contains("cert"));
}
