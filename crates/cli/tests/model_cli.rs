//! `lazarus model` end to end: the real binary, Daly's published cases, JSON keys, plots,
//! and errors that name the flag.

use std::process::{Command, Output};

fn lazarus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .arg("model")
        .args(args)
        .output()
        .expect("spawn lazarus")
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = lazarus(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("missing numeric key {key} in {v}"))
}

#[test]
fn daly_published_cases_in_json() {
    // Daly (2006): T_s = 500 h, R = 10 min, δ = 5 min; optimum ≈ 117, 57, 9.1 minutes.
    for (mtbf, published_min, tol) in [("24h", 117.0, 0.5), ("6h", 57.0, 0.5), ("15m", 9.1, 0.1)] {
        let v = json(&[
            "--cost",
            "5m",
            "--restart",
            "10m",
            "--mtbf",
            mtbf,
            "--work",
            "500h",
        ]);
        let daly = num(&v, "daly_s") / 60.0;
        let optimal = num(&v, "optimal_s") / 60.0;
        assert!((daly - published_min).abs() <= tol, "{mtbf}: daly {daly}");
        assert!(
            (optimal - published_min).abs() <= 2.0 * tol,
            "{mtbf}: optimal {optimal}"
        );
        let young = num(&v, "young_s");
        let m = num(&v, "mtbf_s");
        assert!((young - (2.0 * 300.0 * m).sqrt()).abs() < 1e-6);
        let runtime = num(&v, "expected_runtime_s");
        assert!(runtime > 500.0 * 3600.0, "{runtime}");
        // The optimum's run time is no worse than any formula's.
        for f in ["young", "daly", "daly1"] {
            let other = v["formulas"][f]["expected_runtime_s"]
                .as_f64()
                .unwrap_or(f64::INFINITY);
            assert!(runtime <= other * (1.0 + 1e-12), "{f}");
        }
    }
}

#[test]
fn table_lists_every_formula() {
    let out = lazarus(&["--cost", "90s", "--mtbf", "1.5h", "--work", "2d"]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Young",
        "Daly (first order)",
        "Daly (higher order)",
        "exact optimum",
        "%",
    ] {
        assert!(s.contains(needle), "{needle} missing in\n{s}");
    }
}

#[test]
fn plots_svg_and_png() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("curve.svg");
    let png = dir.path().join("curve.PNG");
    for (path, linear) in [(&svg, false), (&png, true)] {
        let p = path.to_str().expect("utf-8 path");
        let mut args = vec![
            "--cost", "5m", "--mtbf", "6h", "--work", "500h", "--plot", p,
        ];
        if linear {
            args.push("--linear");
        }
        let out = lazarus(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = std::fs::read_to_string(&svg).expect("svg written");
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    assert!(s.contains("<polyline") && s.contains("exact optimum") && s.contains("Young"));
    assert_eq!(s.matches("<circle").count(), 4);
    let b = std::fs::read(&png).expect("png written");
    assert_eq!(b.get(..8), Some(&b"\x89PNG\r\n\x1a\n"[..]));
    assert_eq!(b.get(12..16), Some(&b"IHDR"[..]));
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    assert_eq!((w, h), (860, 520));
    assert_eq!(b.get(b.len() - 8..b.len() - 4), Some(&b"IEND"[..]));
}

#[test]
fn errors_name_the_flag_and_exit_2() {
    let cases: [(&[&str], &str); 5] = [
        (&["--cost", "5", "--mtbf", "1h", "--work", "1h"], "--cost"),
        (
            &["--cost", "5s", "--mtbf", "1 fortnight", "--work", "1h"],
            "--mtbf",
        ),
        (&["--cost", "5s", "--mtbf", "1h", "--work", "0s"], "--work"),
        (
            &[
                "--cost",
                "5s",
                "--mtbf",
                "1h",
                "--work",
                "1h",
                "--restart",
                "-1s",
            ],
            "--restart",
        ),
        (
            &[
                "--cost", "5s", "--mtbf", "1h", "--work", "1h", "--plot", "x.gif",
            ],
            "--plot",
        ),
    ];
    for (args, flag) in cases {
        let out = lazarus(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
