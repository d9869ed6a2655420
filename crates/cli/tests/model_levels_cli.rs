//! `lazarus model levels` end to end: the real binary prints the periods the library
//! computes (`lazarus::policy::MultiLevel::plan`), flags `lazarus run` accepts, and errors
//! that name the flag.

use lazarus::policy::{parse_duration, Level, Model, MultiLevel, PolicySpec};
use std::process::{Command, Output};

fn lazarus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(["model", "levels"])
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

/// Equal to rounding: the binary builds each level's rate as a sum of 1/MTBF, so the last
/// bit may differ from a model built from the MTBF directly.
fn close(a: &serde_json::Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() <= 1e-12 * b.abs())
}

fn secs(s: &str) -> f64 {
    parse_duration("test", s).unwrap().as_secs_f64()
}

const BRIEF: [&str; 10] = [
    "--cost",
    "0.2s,0.5s,2s",
    "--restart",
    "1s,5s,30s",
    "--mtbf-process",
    "4h",
    "--mtbf-host",
    "1d",
    "--mtbf-system",
    "7d",
];

#[test]
fn printed_periods_are_the_library_plan() {
    let v = json(&BRIEF);
    // The same model built by the library: process crashes -> L1, host losses -> L2,
    // system failures -> L4.
    let ml = MultiLevel::new(vec![
        Level::new(secs("0.2s"), secs("1s"), secs("4h")).unwrap(),
        Level::new(secs("0.5s"), secs("5s"), secs("1d")).unwrap(),
        Level::new(secs("2s"), secs("30s"), secs("7d")).unwrap(),
    ])
    .unwrap();
    let plan = ml.plan();
    assert!(plan.proven);
    assert_eq!(v["proven"].as_bool(), Some(true));
    assert!(close(&v["interval_s"], plan.interval_s), "{v}");
    assert!(close(&v["overhead"], plan.overhead), "{v}");
    let levels = v["levels"].as_array().unwrap();
    let every = plan.every();
    let periods = plan.periods_s();
    let young = ml.young_periods();
    for (j, (lazarus_level, recovers)) in [
        (1, "process crashes"),
        (2, "host losses"),
        (4, "system failures"),
    ]
    .into_iter()
    .enumerate()
    {
        let l = &levels[j];
        assert_eq!(l["level"].as_u64(), Some(lazarus_level));
        assert_eq!(l["recovers"][0].as_str(), Some(recovers));
        assert_eq!(l["every"].as_u64(), Some(u64::from(every[j])));
        assert!(close(&l["period_s"], periods[j]), "{l}");
        assert!(close(&l["young_period_s"], young[j]), "{l}");
    }
    // Nested, increasing, and better than every level on every checkpoint.
    assert!(
        every[0] == 1 && every[1] > 1 && every[2] > every[1],
        "{every:?}"
    );
    let all = v["every_level_every_checkpoint"]["overhead"]
        .as_f64()
        .unwrap();
    assert!(plan.overhead < all, "{} vs {all}", plan.overhead);
    // The printed flags and policy are what `lazarus run` and PolicySpec accept.
    let flags = v["run_flags"].as_str().unwrap();
    assert_eq!(
        flags,
        format!(
            "--l1-every 1 --l2-every {} --l4-every {}",
            every[1], every[2]
        )
    );
    for pair in flags.split(" --") {
        let value = pair.rsplit(' ').next().unwrap();
        value.parse::<lazarus::levels::Period>().unwrap();
    }
    let spec: PolicySpec = v["policy"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        spec,
        PolicySpec::EveryInterval(std::time::Duration::from_millis(
            (plan.interval_s * 1e3).round() as u64
        ))
    );
}

#[test]
fn the_table_shows_the_periods_and_the_run_flags() {
    let out = lazarus(&BRIEF);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let v = json(&BRIEF);
    for needle in [
        "L1",
        "L2",
        "L4",
        "process crashes",
        "Young period",
        "expected overhead",
        v["run_flags"].as_str().unwrap(),
        v["policy"].as_str().unwrap(),
    ] {
        assert!(s.contains(needle), "{needle} missing in\n{s}");
    }
}

#[test]
fn one_level_is_dalys_optimum() {
    let v = json(&[
        "--levels",
        "4",
        "--cost",
        "5m",
        "--restart",
        "10m",
        "--mtbf-system",
        "24h",
    ]);
    let daly = Model::new(300.0, 86_400.0, 600.0).unwrap();
    let t = v["interval_s"].as_f64().unwrap();
    assert!((t - daly.optimal()).abs() <= 1e-9 * t, "{t}");
    assert_eq!(v["run_flags"].as_str(), Some("--l4-every 1"));
}

#[test]
fn failure_classes_without_their_level_go_to_the_next_one() {
    // No L2: host losses are recovered from L4, whose rate is host + system.
    let v = json(&[
        "--levels",
        "1,4",
        "--cost",
        "1s,3s",
        "--mtbf-process",
        "4h",
        "--mtbf-host",
        "1d",
        "--mtbf-system",
        "7d",
    ]);
    let l4 = &v["levels"][1];
    assert_eq!(l4["recovers"].as_array().unwrap().len(), 2);
    let want = 1.0 / (1.0 / 86_400.0 + 1.0 / (7.0 * 86_400.0));
    assert!((l4["mtbf_s"].as_f64().unwrap() - want).abs() < 1e-6 * want);
}

#[test]
fn bad_input_is_refused_naming_the_flag() {
    let with = |flag: &str, value: &str| {
        let mut args: Vec<String> = BRIEF.iter().map(|s| s.to_string()).collect();
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.to_string();
        args
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with("--cost", "-0.2s,0.5s,2s"), "--cost"),
        (with("--cost", "0s,0.5s,2s"), "--cost"),
        (with("--cost", "0.2s,0.5s"), "--cost"),
        (with("--restart", "1s,5s,-30s"), "--restart"),
        (with("--mtbf-process", "0s"), "--mtbf-process"),
        (with("--mtbf-host", "0h"), "--mtbf-host"),
        (with("--mtbf-system", "7"), "--mtbf-system"),
        (with("--mtbf-host", "1 fortnight"), "--mtbf-host"),
        (with("--mtbf-system", "1.2.3d"), "--mtbf-system"),
    ];
    let mut more: Vec<String> = BRIEF.iter().map(|s| s.to_string()).collect();
    more.extend(["--levels".to_string(), "1,2,3".to_string()]);
    let mut cases = cases;
    cases.push((more, "--levels"));
    let mut no_l4: Vec<String> = with("--cost", "1s,2s");
    no_l4.drain(2..4); // the three restarts
    no_l4.extend(["--levels".to_string(), "1,2".to_string()]);
    cases.push((no_l4, "--mtbf-system"));
    for (args, flag) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lazarus(&refs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            err.starts_with(&format!("lazarus: error: {flag}")),
            "{args:?}: {err}"
        );
    }
}

/// Regression: with `--work` shorter than a level's period, the table printed the
/// schedule's steady-state run time as if that level were written, with no word that the
/// job never writes it. The table now says so per level and the JSON has
/// `written_in_job`.
#[test]
fn a_level_whose_period_exceeds_the_work_is_named() {
    let mut args = BRIEF.to_vec();
    args.extend(["--work", "10min"]);
    let v = json(&args);
    let written: Vec<serde_json::Value> = v["levels"]
        .as_array()
        .expect("levels")
        .iter()
        .map(|l| l["written_in_job"].clone())
        .collect();
    let periods: Vec<f64> = v["levels"]
        .as_array()
        .expect("levels")
        .iter()
        .map(|l| l["period_s"].as_f64().unwrap_or(f64::NAN))
        .collect();
    for (w, p) in written.iter().zip(&periods) {
        assert_eq!(*w, serde_json::json!(*p < 600.0), "{v}");
    }
    assert_eq!(
        written.last(),
        Some(&serde_json::json!(false)),
        "L4 every ~25 min: {v}"
    );
    let out = lazarus(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("note: L4's period") && text.contains("never written in this job"),
        "{text}"
    );
    assert!(!text.contains("note: L1's period"), "{text}");
    // Without --work nothing is claimed.
    assert_eq!(
        json(&BRIEF)["levels"][0]["written_in_job"],
        serde_json::Value::Null
    );
}
