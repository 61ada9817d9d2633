//! Tidy: the invariants ARCHITECTURE.md states, checked on the source text (in the
//! manner of rust-analyzer's `tidy.rs`), so that the map cannot drift from the code
//! unnoticed. Each check names the rule it enforces; a failure lists the offending
//! lines.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code lines of a file: comments and `#[cfg(test)]` modules left out (tests
/// may build whatever they check).
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start() == "#[cfg(test)]" {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        out.push((i + 1, line.to_owned()));
    }
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The source files of the server and the core crate (not tests, benches, fuzz).
fn sources() -> Vec<PathBuf> {
    let mut files = rust_files(&root().join("src"));
    files.extend(rust_files(&root().join("crates/core/src")));
    files
}

/// Lines of `files` outside `allowed` (path prefixes) that match `bad`.
fn offenders(allowed: &[&str], bad: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for path in sources() {
        let rel = relative(&path);
        if allowed.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        for (n, line) in code_lines(&path) {
            if bad(&line) {
                out.push(format!("{rel}:{n}: {}", line.trim()));
            }
        }
    }
    out
}

#[test]
fn no_sql_outside_the_store() {
    const SQL: [&str; 7] = [
        "SELECT ",
        "INSERT INTO",
        "DELETE FROM",
        "UPDATE analytics",
        "CREATE TABLE",
        "sqlx::query",
        "QueryBuilder",
    ];
    let found = offenders(&["src/store/"], |line| SQL.iter().any(|k| line.contains(k)));
    assert!(
        found.is_empty(),
        "SQL outside src/store:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_client_ip_is_decided_in_one_place() {
    let found = offenders(&["src/http/client_ip.rs"], |line| {
        line.to_ascii_lowercase().contains("x-forwarded-for")
    });
    assert!(
        found.is_empty(),
        "X-Forwarded-For read outside src/http/client_ip.rs:\n{}",
        found.join("\n")
    );
    // The accept loop (`serve`) hands each connection's peer to the app; only
    // `client_ip` turns it into a client IP for the handlers.
    let found = offenders(
        &["src/http/client_ip.rs", "src/http/serve/mod.rs"],
        |line| line.to_ascii_lowercase().contains("connectinfo"),
    );
    assert!(
        found.is_empty(),
        "the socket peer read outside src/http/client_ip.rs and the accept loop:\n{}",
        found.join("\n")
    );
}

#[test]
fn handlers_never_reach_the_store_or_redis() {
    let found = offenders(
        &[
            "src/service/",
            "src/lib.rs",
            "src/store/",
            "src/live/",
            "src/broker/",
            "src/ingest/",
        ],
        |line| {
            line.contains(".store.")
                || line.contains("redis::")
                || line.contains("crate::store::EventStore")
        },
    );
    assert!(
        found.is_empty(),
        "the HTTP layer reaches the store or Redis directly:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_core_crate_depends_on_no_io_library() {
    let manifest = std::fs::read_to_string(root().join("crates/core/Cargo.toml")).unwrap();
    let deps: Vec<&str> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("[dependencies]"))
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for banned in [
        "axum",
        "yawc",
        "redis",
        "sqlx",
        "hyper",
        "tower",
        "tower-http",
    ] {
        assert!(
            !deps.contains(&banned),
            "crates/core must not depend on {banned}: the hub knows nothing of it"
        );
    }
    assert!(
        !deps.is_empty(),
        "could not read crates/core's dependencies"
    );
}

/// Every module, file and constant ARCHITECTURE.md names in backticks exists.
#[test]
fn architecture_md_names_only_what_exists() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let all_source: String = sources()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut missing = Vec::new();
    for name in doc.split('`').skip(1).step_by(2) {
        let name = name.trim();
        if name.is_empty() || name.contains(' ') {
            continue;
        }
        if name.contains('/')
            && (name.ends_with(".rs")
                || name.ends_with(".md")
                || name.ends_with(".sql")
                || name.ends_with(".proto")
                || name.ends_with('/'))
        {
            if !root().join(name.trim_end_matches('/')).exists() {
                missing.push(format!("path {name}"));
            }
        } else if name.len() > 2
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && name.contains('_')
        {
            // A constant, or an environment variable a flag reads.
            if !all_source.contains(&format!("const {name}"))
                && !all_source.contains(&format!("\"{name}\""))
            {
                missing.push(format!("constant {name}"));
            }
        } else if let Some(module) = name.strip_prefix("mod ") {
            missing.push(format!("module {module}"));
        }
    }
    // The code map's headings are modules: `### `a`, `b`` names modules a and b.
    for heading in doc.lines().filter(|l| l.starts_with("### ")) {
        for module in heading.split('`').skip(1).step_by(2) {
            let module = module.trim_end_matches('/').replace("::", "/");
            let module = module.as_str();
            if module.contains(' ') || module.contains('.') {
                continue;
            }
            let candidates = [
                format!("src/{module}.rs"),
                format!("src/{module}/mod.rs"),
                format!("src/{module}"),
                format!("crates/core/src/{module}.rs"),
                format!("crates/core/src/{module}/mod.rs"),
                format!("crates/{module}"),
                module.to_owned(),
            ];
            if !candidates.iter().any(|c| root().join(c).exists()) {
                missing.push(format!("module {module} (heading {heading:?})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what does not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn protocol_messages_are_written_in_one_place() {
    // The `"type"` of a WebSocket message and its encoding belong to
    // `protocol::ServerMessage` (and the generated `proto`): a message written by
    // hand elsewhere would drift from CONTRACT.md or from its protobuf.
    const ALLOWED: [&str; 2] = ["crates/core/src/protocol/", "crates/core/src/proto.rs"];
    // A stale entry (the module moved) must not quietly allow nothing.
    for place in ALLOWED {
        assert!(
            root().join(place).exists(),
            "{place} does not exist: update the allow-list"
        );
    }
    let found = offenders(&ALLOWED, |line| {
        line.contains("#[serde(rename = \"type\"")
            || line.contains("protocol::to_bytes")
            || line.contains("serde_json::to_vec")
    });
    assert!(
        found.is_empty(),
        "a protocol message written outside crates/core/src/protocol/:\n{}",
        found.join("\n")
    );
}

/// A source file stays short enough to read whole: past `MAX_LINES` it is split by
/// what it owns, or it is listed here with the reason it is not.
#[test]
fn no_source_file_is_over_400_lines_without_a_reason() {
    const MAX_LINES: usize = 400;
    const ALLOWED: [&str; 1] = [
        // The load generator: one single-threaded binary, run by hand, that nothing
        // imports (ARCHITECTURE.md, `crates/bench`).
        "crates/bench/src/main.rs",
    ];
    let mut files = rust_files(&root().join("src"));
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            files.extend(rust_files(&src));
        }
    }
    for place in ALLOWED {
        assert!(
            files.iter().any(|f| relative(f) == place),
            "{place} is allowed to be long but does not exist: update the allow-list"
        );
    }
    let long: Vec<String> = files
        .iter()
        .filter(|f| !ALLOWED.contains(&relative(f).as_str()))
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", relative(f)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines (split them by what they own, or allow one \
         with its reason):\n{}",
        long.join("\n")
    );
}

/// The README's close-code table is `Disconnect::ALL` written out: one row per way a
/// session ends, with its code, its metric label and the advice's very sentence.
/// Columns are found by their headings, so the table may gain or reorder columns.
#[test]
fn the_readme_close_code_table_is_disconnect_all() {
    use maicivy_analytics::disconnect::Disconnect;

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let mut lines = readme.lines().skip_while(|l| {
        let l = l.to_ascii_lowercase();
        !(l.trim_start().starts_with('|')
            && l.contains("close code")
            && l.contains("what the client should do"))
    });
    let header = cells(lines.next().expect(
        "README.md has a table whose headings include `close code` and `what the client should do`",
    ));
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("the close-code table has no column {name:?}: {header:?}"))
    };
    let (code_col, label_col, advice_col) = (
        column("close code"),
        column("label"),
        column("what the client should do"),
    );
    let plain = |cell: &str| {
        cell.trim_matches(|c| c == '`' || c == '*')
            .trim()
            .to_owned()
    };
    let mut documented: Vec<(Option<u16>, String, String)> = lines
        .skip(1) // the |---| line
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|line| {
            let row = cells(line);
            assert_eq!(
                row.len(),
                header.len(),
                "a row of the close-code table: {line}"
            );
            let code = plain(&row[code_col]);
            let code = if code.to_ascii_lowercase().starts_with("none") {
                None
            } else {
                let digits: String = code.chars().take_while(char::is_ascii_digit).collect();
                Some(digits.parse::<u16>().unwrap_or_else(|_| {
                    panic!("the close-code table's code {code:?} is neither a number nor `none`")
                }))
            };
            (code, plain(&row[label_col]), row[advice_col].clone())
        })
        .collect();
    let mut expected: Vec<(Option<u16>, String, String)> = Disconnect::ALL
        .iter()
        .map(|d| {
            (
                d.close_code(),
                d.metric_label().to_owned(),
                d.reconnect().sentence().to_owned(),
            )
        })
        .collect();
    documented.sort();
    expected.sort();
    let row = |(code, label, advice): &(Option<u16>, String, String)| {
        let code = code.map_or("none".to_owned(), |c| c.to_string());
        format!("| {code} | `{label}` | … | {advice} |")
    };
    let missing: Vec<String> = expected
        .iter()
        .filter(|r| !documented.contains(r))
        .map(row)
        .collect();
    let extra: Vec<String> = documented
        .iter()
        .filter(|r| !expected.contains(r))
        .map(row)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && documented.len() == expected.len(),
        "README.md's close-code table differs from Disconnect::ALL\nmissing:\n{}\nnot a Disconnect:\n{}",
        missing.join("\n"),
        extra.join("\n"),
    );
}
