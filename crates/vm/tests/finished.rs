//! Regression (review): the exit record of a finished program answered any command line
//! with its exit status, before the command was compared with the recorded one.

mod common;

#[test]
fn finished_record_refuses_another_command_line() {
    if !common::have_wasm_opt() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut c = common::appender::config(d.path());
    std::fs::write(d.path().join("data/log.txt"), "").unwrap();
    assert_eq!(lazarus_vm::run(&c).unwrap().exit_code, 7);
    let again = lazarus_vm::run(&c).unwrap();
    assert!(again.already_finished);
    assert_eq!(again.exit_code, 7);
    c.args = vec!["something".into(), "else".into()];
    let e = lazarus_vm::run(&c).unwrap_err();
    assert_eq!(e.kind(), lazarus_vm::VmErrorKind::Mismatch, "{e}");
    assert!(e.to_string().contains("arguments"), "{e}");
    c.args = vec![];
    c.env = vec!["X=1".into()];
    let e = lazarus_vm::run(&c).unwrap_err();
    assert_eq!(e.kind(), lazarus_vm::VmErrorKind::Mismatch, "{e}");
    assert!(e.to_string().contains("environment"), "{e}");
}
