//! The docs cite tests and functions by name (`a_failed_round_…`) as the evidence for what
//! they claim; a rename left three of them naming nothing (found by an audit of the docs,
//! 2026-12-08). Every such name in README.md and docs/*.md must still occur in the
//! project's Rust sources. PERFORMANCE.md is a lab notebook (kernel symbols, names of
//! past code) and is not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A backticked snake_case word long enough to be a test or function name rather than a
/// variable or a flag: at least 20 characters and 3 underscores.
fn cited_names(text: &str) -> BTreeSet<String> {
    // Paired line by line: a stray backtick then upsets one line, not the rest of the file.
    text.lines()
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .filter(|w| {
            w.len() >= 20
                && w.matches('_').count() >= 3
                && w.starts_with(|c: char| c.is_ascii_lowercase())
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            // Build output and fuzzing state, not sources.
            if !matches!(
                name.to_str(),
                Some("target" | ".git" | "corpus" | "artifacts")
            ) {
                rust_sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether `word` occurs in `text` as a whole identifier.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

#[test]
fn every_test_or_function_the_docs_cite_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let p = e.expect("docs/ entry").path();
        if p.extension().is_some_and(|x| x == "md")
            && p.file_name().is_some_and(|n| n != "PERFORMANCE.md")
        {
            docs.push(p);
        }
    }
    let mut files = Vec::new();
    rust_sources(root, &mut files);
    let sources: String = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        has_word(&sources, "every_test_or_function_the_docs_cite_exists"),
        "the source walk found {} files, not this one",
        files.len()
    );
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("doc readable");
        for name in cited_names(&text) {
            checked += 1;
            if !has_word(&sources, &name) {
                missing.push(format!(
                    "{}: `{name}`",
                    doc.strip_prefix(root).unwrap_or(doc).display()
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} cited names found: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "names cited in the docs that no source file contains (renamed or never written):\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_citation_scan_finds_what_it_should() {
    let text = "see `a_rank_killed_mid_round_recovers` and `short_name`, `--some-flag`, \
                `Job::checkpoint`, `LAZARUS_ON_ALL_DAMAGED`";
    assert_eq!(
        cited_names(text).into_iter().collect::<Vec<_>>(),
        ["a_rank_killed_mid_round_recovers"]
    );
    assert!(has_word("fn abc_def() {}", "abc_def"));
    assert!(!has_word("fn abc_defg() {}", "abc_def"));
    assert!(!has_word("fn xabc_def() {}", "abc_def"));
}
