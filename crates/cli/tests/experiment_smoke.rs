//! `lazarus bench experiment` end to end on a tiny configuration: real `lazarus run`
//! supervisor, real SIGKILLs at seeded exponential times, real restarts. Checks the
//! pipeline (calibration, baseline, model, trials whose checksums must match the
//! failure-free run, table, JSON, SVG), not the accuracy: that is the bench's job.

use std::process::Command;

fn lazarus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
}

#[test]
fn tiny_experiment_writes_table_json_and_plot() {
    let out_dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let seed = 11;
    eprintln!("seed {seed}");
    let out = lazarus()
        .args(["bench", "experiment", "--ranks", "2", "--size", "64"])
        .args(["--work", "2s", "--mtbf", "500ms", "--calibration", "300ms"])
        .args([
            "--trials",
            "1",
            "--intervals",
            "0.5x,2x",
            "--restart-samples",
            "2",
        ])
        .args(["--seed", &seed.to_string()])
        .arg("--out")
        .arg(out_dir.path())
        .arg("--scratch")
        .arg(scratch.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("| 0.5×Daly |"), "{stdout}");
    assert!(stdout.contains("| 2×Daly |"), "{stdout}");
    assert!(stdout.contains("Target 1"), "{stdout}");
    assert!(
        stdout.contains("observed MTBF") || stdout.contains("none in"),
        "{stdout}"
    );
    let table = std::fs::read_to_string(out_dir.path().join("results.md")).unwrap();
    assert_eq!(table.trim(), stdout.trim());
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.path().join("results.json")).unwrap(),
    )
    .unwrap();
    // R comes from the supervisor's own kill → resumed timing of real kills.
    let cal = &json["calibration"];
    let restarts = cal["restart_samples_s"].as_array().unwrap();
    assert_eq!(restarts.len(), 2, "{cal}");
    assert!(restarts.iter().all(|r| r.as_f64().unwrap() > 0.0), "{cal}");
    assert!(cal["spawn_latency_s"].as_f64().unwrap() <= cal["restart_s"].as_f64().unwrap());
    assert_eq!(cal["cost_samples_s"].as_array().unwrap().len(), 3);
    assert_eq!(json["design"]["intervals"].as_array().unwrap().len(), 2);
    assert_eq!(json["rounds"][0]["order"].as_array().unwrap().len(), 2);
    let sweep = json["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 2);
    for s in sweep {
        let trials = s["trials"].as_array().unwrap();
        assert_eq!(trials.len(), 1);
        // Every trial finished with the failure-free checksum (the bench refuses otherwise).
        assert_eq!(trials[0]["checksum"], json["baseline_checksum"]);
        assert!(s["predicted_s"].as_f64().unwrap() > 0.0);
        // At most one supervisor recovery time per injected failure (none for a failure
        // whose recovery was itself killed).
        let t = &trials[0];
        assert!(
            t["recoveries_s"].as_array().unwrap().len() as u64 <= t["failures"].as_u64().unwrap(),
            "{t}"
        );
    }
    let failures: u64 = sweep
        .iter()
        .map(|s| s["trials"][0]["failures"].as_u64().unwrap())
        .sum();
    eprintln!("injected failures over both trials: {failures}");
    let svg = std::fs::read_to_string(out_dir.path().join("walltime.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("walltime.svg is well-formed");
    assert!(doc.root_element().has_tag_name("svg"));
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::trim))
        .collect();
    for want in [
        "checkpoint interval τ (s, log scale)",
        "wall time (s)",
        "measured vs model",
        "model T_w(τ)",
        "measured mean, min–max",
        "failure-free",
        "Daly (higher order): ",
    ] {
        assert!(
            texts.iter().any(|t| t.contains(want)),
            "{want} missing: {texts:?}"
        );
    }
    // One red mean dot per interval (each had one trial), one grey dot per trial plus the
    // legend's sample.
    let discs = |fill: &str, r: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name("circle"))
            .filter(|n| n.attribute("fill") == Some(fill) && n.attribute("r") == Some(r))
            .count()
    };
    assert_eq!(discs("#D62728", "5"), 2, "{svg}");
    assert_eq!(discs("#969696", "2"), 3, "{svg}");
    // The scratch repositories are removed.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn bad_flags_name_the_flag() {
    for (flag, value, expect) in [
        ("--intervals", "0x", "--intervals"),
        ("--mtbf", "5", "--mtbf"),
        ("--work", "0s", "--work"),
    ] {
        let out = lazarus()
            .args(["bench", "experiment", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{flag} {value}: {stderr}");
    }
}
