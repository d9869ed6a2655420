//! `lazarus run`: output prefixing, environment, first-failure exit status, bad flags.

use std::process::Command;
use std::time::{Duration, Instant};

fn lazarus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lazarus"))
}

#[test]
fn output_is_prefixed_per_rank_on_the_right_stream() {
    let out = lazarus()
        .args(["run", "-n", "3", "--env", "GREETING=hi", "--", "sh", "-c"])
        .arg("echo \"$GREETING $LAZARUS_RANK/$LAZARUS_WORLD_SIZE inc=$LAZARUS_INCARNATION\"; echo oops >&2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for r in 0..3 {
        assert!(
            stdout.contains(&format!("[rank {r}] hi {r}/3 inc=0\n")),
            "{stdout}"
        );
        assert!(stderr.contains(&format!("[rank {r}] oops\n")), "{stderr}");
    }
    assert!(!stdout.contains("oops"));
}

#[test]
fn exits_with_the_first_failure_status_and_names_the_rank() {
    let t0 = Instant::now();
    let out = lazarus()
        .args(["run", "-n", "3", "--", "sh", "-c"])
        .arg("if [ \"$LAZARUS_RANK\" = 1 ]; then exit 5; fi; sleep 30")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rank 1 exited with status 5"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(15));
}

#[test]
fn invalid_timeouts_are_refused_before_starting() {
    let out = lazarus()
        .args(["run", "-n", "2", "--failure-timeout-ms", "10", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failure timeout"));
}

/// `--fast-codec` is read by the ranks only with a fast level: without one it would be
/// ignored without a word. A bad value names itself.
#[test]
fn fast_codec_without_a_fast_level_or_unknown_is_refused() {
    let out = lazarus()
        .args(["run", "-n", "2", "--fast-codec", "zstd", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fast-codec needs --l1-every"), "{stderr}");
    let out = lazarus()
        .args([
            "run",
            "-n",
            "2",
            "--l1-every",
            "1",
            "--fast-codec",
            "lz4",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lz4") && stderr.contains("auto, none or zstd"),
        "{stderr}"
    );
}

#[test]
fn missing_program_is_a_usage_error() {
    let out = lazarus().args(["run", "-n", "2"]).output().unwrap();
    assert!(!out.status.success());
}

/// Issue #12: log lines carry colour escape codes only on a terminal and never with
/// `NO_COLOR`; redirected stderr (a file, a pipe, a CI log) gets plain text. The warning
/// comes from the supervisor (a rank printed a malformed output marker).
#[test]
fn log_colour_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let bad_marker = "printf '\\036lazarus:%s:nope 1 2\\n' \"$LAZARUS_OUTPUT_MARKERS\"";
    let run = |repo: &str| {
        vec![
            "run".to_string(),
            "-n".into(),
            "1".into(),
            "--repo".into(),
            dir.path().join(repo).display().to_string(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            bad_marker.into(),
        ]
    };
    // Piped stderr: plain text.
    let out = lazarus()
        .args(run("a"))
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ignoring malformed output marker"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in a pipe: {stderr:?}"
    );

    // A terminal (a pty from `script`): coloured, unless NO_COLOR is set.
    let have_script = Command::new("script").arg("--version").output().is_ok();
    if !have_script {
        assert!(
            !lazarus_testbed::in_ci(),
            "`script` (util-linux) is needed for the terminal half of this test in CI"
        );
        eprintln!("SKIPPING the terminal half: no `script` command (util-linux)");
        return;
    }
    let in_pty = |repo: &str, no_color: Option<&str>| {
        let line: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_lazarus").to_string())
            .chain(run(repo))
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let mut c = Command::new("script");
        c.args(["-qec", &line.join(" "), "/dev/null"]);
        match no_color {
            Some(v) => c.env("NO_COLOR", v),
            None => c.env_remove("NO_COLOR"),
        };
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = in_pty("b", None);
    assert!(tty.contains("ignoring malformed output marker"), "{tty}");
    assert!(tty.contains('\u{1b}'), "a terminal gets colour: {tty:?}");
    let plain = in_pty("c", Some("1"));
    assert!(
        plain.contains("ignoring malformed output marker"),
        "{plain}"
    );
    assert!(
        !plain.contains('\u{1b}'),
        "NO_COLOR=1 in a terminal: {plain:?}"
    );
}

/// `--frame-mac` (else LAZARUS_FRAME_MAC, else on) reaches every rank, the flag winning;
/// a bad value is refused before anything starts.
#[test]
fn the_frame_mac_setting_reaches_every_rank_and_the_flag_wins() {
    for (env, flag, want) in [
        (None, None, "on"),
        (Some("off"), None, "off"),
        (Some("off"), Some("on"), "on"),
        (None, Some("off"), "off"),
    ] {
        let mut cmd = lazarus();
        cmd.env_remove("LAZARUS_FRAME_MAC").args(["run", "-n", "2"]);
        if let Some(e) = env {
            cmd.env("LAZARUS_FRAME_MAC", e);
        }
        if let Some(f) = flag {
            cmd.args(["--frame-mac", f]);
        }
        let out = cmd
            .args(["--", "sh", "-c", "echo \"mac=$LAZARUS_FRAME_MAC\""])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        for r in 0..2 {
            assert!(
                stdout.contains(&format!("[rank {r}] mac={want}\n")),
                "env {env:?} flag {flag:?}: {stdout}"
            );
        }
    }
    let out = lazarus()
        .args(["run", "-n", "2", "--frame-mac", "maybe", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected \"on\" or \"off\""));
}
