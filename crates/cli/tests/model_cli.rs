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

/// Regression: for a job shorter than the optimal interval the model printed Daly's
/// T_w at that interval (a checkpoint the job never takes: 6 % overhead for a 30-minute
/// job, 1-minute checkpoints and a 10-hour MTBF) and no word that checkpointing does not
/// pay. It now prices such an interval as no checkpoint, says so, and its JSON tells
/// whether checkpoints pay.
#[test]
fn a_job_shorter_than_the_optimal_interval_is_told_checkpointing_does_not_pay() {
    let short = ["--cost", "60s", "--mtbf", "10h", "--work", "30min"];
    let v = json(&short);
    let none = num(&v, "no_checkpoint_runtime_s");
    let expected = 36_000.0 * ((1800.0f64 / 36_000.0).exp() - 1.0);
    assert!((none - expected).abs() < 1e-6, "{none} vs {expected}");
    assert_eq!(v["checkpoints_pay"], serde_json::json!(false), "{v}");
    assert!(num(&v, "optimal_s") >= 1800.0, "{v}");
    assert!((num(&v, "expected_runtime_s") - none).abs() < 1e-9, "{v}");
    // Every formula's interval is past the work here: each is priced as no checkpoint.
    for f in ["young", "daly1", "daly", "optimal"] {
        let o = v["formulas"][f]["overhead"].as_f64().unwrap_or(f64::NAN);
        assert!((o - (none / 1800.0 - 1.0)).abs() < 1e-12, "{f}: {o} in {v}");
    }
    let out = lazarus(&short);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("checkpointing does not pay for this job"), "{s}");
    // The plot of such a job draws (the curve is flat from τ = T_s on).
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("short.svg");
    let mut args = short.to_vec();
    let path = svg.to_string_lossy().to_string();
    args.extend(["--plot", path.as_str()]);
    assert!(lazarus(&args).status.success());
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    // A long job: checkpoints pay and nothing is said.
    let long = ["--cost", "60s", "--mtbf", "10h", "--work", "30h"];
    assert_eq!(json(&long)["checkpoints_pay"], serde_json::json!(true));
    let out = lazarus(&long);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("does not pay"));
}

/// The formulas' colours in the figure (`crates/cli/src/cmd/model/plot.rs`).
const MARKS: [(&str, [u8; 3]); 4] = [
    ("Young", [31, 119, 180]),
    ("Daly (first order)", [148, 103, 189]),
    ("Daly (higher order)", [44, 160, 44]),
    ("exact optimum", [214, 39, 40]),
];
const CURVE: [u8; 3] = [40, 40, 40];

fn hex([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02X}{g:02X}{b:02X}")
}

fn plot(path: &std::path::Path, linear: bool) {
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

#[test]
fn svg_plot_is_well_formed_with_curve_marks_legend_and_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("curve.svg");
    plot(&svg, false);
    let s = std::fs::read_to_string(&svg).expect("svg written");
    let doc = roxmltree::Document::parse(&s).expect("well-formed XML");
    let root = doc.root_element();
    assert!(root.has_tag_name("svg"));
    assert_eq!(
        (root.attribute("width"), root.attribute("height")),
        (Some("860"), Some("520"))
    );
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect();
    let has = |want: &str| texts.iter().any(|t| t.contains(want));
    assert!(has("checkpoint interval (min, log scale)"), "{texts:?}");
    assert!(has("expected run time (d)"), "{texts:?}");
    assert!(has("cost 5.00 min, MTBF 6.00 h"), "{texts:?}");
    for (name, _) in MARKS {
        assert!(
            has(&format!("{name}: ")),
            "legend entry {name} missing: {texts:?}"
        );
    }
    let stroked = |c: [u8; 3]| {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(&hex(c)))
            .count()
    };
    assert!(stroked(CURVE) >= 1, "the model curve is drawn");
    for (name, c) in MARKS {
        // The mark (dashes, or one line for the optimum) plus the legend's sample.
        assert!(stroked(c) >= 2, "{name}'s mark is drawn");
        let dots = doc
            .descendants()
            .filter(|n| n.has_tag_name("circle") && n.attribute("fill") == Some(&hex(c)))
            .count();
        assert_eq!(dots, 1, "{name}: one dot on the curve");
    }
}

#[test]
fn png_plot_decodes_with_every_series_and_text_drawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("curve.PNG"); // the extension is case-insensitive
    plot(&path, true);
    let file = std::fs::File::open(&path).expect("png written");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a valid PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("valid PNG data");
    assert_eq!((info.width, info.height), (860, 520));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px = |x: u32, y: u32| {
        let i = ((y * info.width + x) * 3) as usize;
        [buf[i], buf[i + 1], buf[i + 2]]
    };
    let count = |c: [u8; 3]| {
        (0..info.height)
            .flat_map(|y| (0..info.width).map(move |x| (x, y)))
            .filter(|&(x, y)| px(x, y) == c)
            .count()
    };
    assert!(count(CURVE) > 300, "the curve: {} pixels", count(CURVE));
    // Young and Daly (first order) coincide here (both 1 h), and Daly (higher order) and
    // the optimum nearly: at least the one drawn last of each pair is visible, and every
    // colour is in the legend.
    for (name, c) in MARKS {
        assert!(count(c) > 40, "{name}: {} pixels", count(c));
    }
    // Text is rasterised: dark pixels in the x-axis label band and the rotated y label.
    let dark = |xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| {
        ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| px(x, y).iter().all(|&v| v < 100))
            .count()
    };
    assert!(dark(300..600, 485..515) > 100, "x-axis label");
    assert!(dark(0..30, 150..350) > 100, "y-axis label");
    assert!(dark(200..660, 0..30) > 100, "title");
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
