//! The README's settings table and the binaries' `--help` say the same thing: every consumer flag has a row,
//! every row names a flag the binaries have, with the same environment variable and default.

use std::collections::BTreeMap;
use std::process::Command;

use jobstream_tests::bin;

/// One row of the README's settings table.
#[derive(Debug)]
struct Row {
    env: String,
    default: String,
}

/// The README's settings table: `| what | `--flag` | `ENV` | default |`.
fn readme_rows() -> BTreeMap<String, Row> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    readme
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
            let [_, flag, env, default] = cells[..] else { return None };
            let flag = flag.trim_matches('`').split_whitespace().next()?.to_owned();
            let is_flag = flag.strip_prefix("--").is_some_and(|f| f.starts_with(|c: char| c.is_ascii_lowercase()));
            is_flag.then(|| (flag, Row { env: env.trim_matches('`').to_owned(), default: default.to_owned() }))
        })
        .collect()
}

/// A binary's options from its `--help`: flag → (environment variable, default), as clap prints them.
fn help_options(args: &[&str]) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let out = Command::new(bin(args[0])).args(&args[1..]).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut options = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(flag) = trimmed.strip_prefix("--").filter(|_| line.starts_with("      --")) {
            let name = format!("--{}", flag.split([' ', '=', '<']).next().unwrap());
            options.insert(name.clone(), (None, None));
            current = Some(name);
        } else if let (Some(name), Some(env)) = (&current, trimmed.strip_prefix("[env: ")) {
            let env = env.trim_end_matches(']').split('=').next().unwrap().to_owned();
            options.get_mut(name).unwrap().0 = Some(env);
        } else if let (Some(name), Some(default)) = (&current, trimmed.strip_prefix("[default: ")) {
            options.get_mut(name).unwrap().1 = Some(default.trim_end_matches(']').to_owned());
        }
    }
    options.remove("--help");
    options.remove("--version");
    options
}

#[test]
fn the_readme_settings_table_matches_consumer_help() {
    let rows = readme_rows();
    let consumer = help_options(&["consumer"]);
    let mut problems = Vec::new();
    for (flag, (env, default)) in &consumer {
        let Some(row) = rows.get(flag) else {
            problems.push(format!("{flag} is in `consumer --help` but not in the README's settings table"));
            continue;
        };
        if env.as_deref() != Some(row.env.as_str()) {
            problems.push(format!("{flag}: README says env {:?}, --help says {env:?}", row.env));
        }
        // The README may explain a default in words after it (`1048576` (1 MiB)); it must start with it.
        let shown = row.default.trim_start_matches('`');
        match default {
            Some(default) if !shown.starts_with(default.as_str()) => {
                problems.push(format!("{flag}: README says default {:?}, --help says {default:?}", row.default))
            }
            None if !(shown.starts_with('—') || shown.starts_with('<') || shown.starts_with("off")) => {
                problems.push(format!("{flag}: README gives a default {:?}, --help none", row.default))
            }
            _ => {}
        }
    }
    for flag in rows.keys() {
        if !consumer.contains_key(flag) {
            problems.push(format!("the README's settings table has {flag}, which `consumer --help` does not"));
        }
    }
    assert!(problems.is_empty(), "README and --help disagree:\n{}", problems.join("\n"));
}
