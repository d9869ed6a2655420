//! Every example answers `--help` and `-h` with a short usage text and exit status 0
//! (issue #12: they used to take `--help` for a flag needing a value).

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn every_example_prints_its_usage_for_help() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in &names {
        let bin = common::example_bin(name);
        for flag in ["--help", "-h"] {
            let out = common::output_within(
                Command::new(&bin).arg(flag).env_remove("LAZARUS_REPO"),
                Duration::from_secs(60),
                &format!("{name} {flag}"),
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name} {flag}: {:?}\n{stdout}",
                out.status
            );
            assert!(
                stdout.starts_with(&format!("{name}: ")) && stdout.contains("Usage: "),
                "{name} {flag}:\n{stdout}"
            );
            assert!(stdout.contains("-h, --help"), "{name} {flag}:\n{stdout}");
        }
    }
}
