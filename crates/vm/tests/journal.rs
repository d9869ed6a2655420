//! Regression (found by `vm_kill`): a pre-existing file the program appended to before its
//! first checkpoint got the appended line twice after a kill, because no checkpoint knew
//! the file yet. The undo journal records a path's state before the first change; here
//! the WASI host is driven directly, "killed" (dropped) and the journal undone.

use lazarus_vm::wasi::journal::Journal;
use lazarus_vm::wasi::{sig, Preopen, Wasi, WasiConfig};

fn func(name: &str) -> usize {
    sig::FUNCS.iter().position(|f| f.0 == name).unwrap()
}

fn open(w: &mut Wasi, mem: &mut [u8], path: &str, oflags: u64, fdflags: u64) -> u32 {
    mem[100..100 + path.len()].copy_from_slice(path.as_bytes());
    let args = [
        3,
        1,
        100,
        path.len() as u64,
        oflags,
        1 << 6,
        0,
        fdflags,
        200,
    ];
    assert_eq!(w.call(mem, func("path_open"), &args), Ok(0), "open {path}");
    u32::from_le_bytes(mem[200..204].try_into().unwrap())
}

fn write(w: &mut Wasi, mem: &mut [u8], fd: u32, data: &[u8]) {
    mem[400..400 + data.len()].copy_from_slice(data);
    mem[300..304].copy_from_slice(&400u32.to_le_bytes());
    mem[304..308].copy_from_slice(&(data.len() as u32).to_le_bytes());
    assert_eq!(
        w.call(mem, func("fd_write"), &[u64::from(fd), 300, 1, 500]),
        Ok(0)
    );
}

#[test]
fn pre_existing_file_appended_before_the_first_checkpoint_is_rolled_back() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("log.txt"), "existing\n").unwrap();
    let preopens = vec![Preopen {
        host: std::fs::canonicalize(&data).unwrap(),
        guest: ".".into(),
    }];
    let jdir = d.path().join("journal");
    let mut w = Wasi::new(
        WasiConfig {
            args: vec!["p".into()],
            env: vec![],
            preopens: preopens.clone(),
            seed: 0,
        },
        false,
    )
    .unwrap();
    w.set_journal(Journal::open(&jdir).unwrap());
    let mut mem = vec![0u8; 65536];
    let log = open(&mut w, &mut mem, "log.txt", 0, 1);
    write(&mut w, &mut mem, log, b"added\n");
    write(&mut w, &mut mem, log, b"again\n");
    let new = open(&mut w, &mut mem, "new.txt", 1 | 8, 0);
    write(&mut w, &mut mem, new, b"fresh\n");
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "existing\nadded\nagain\n"
    );
    drop(w); // killed before any checkpoint

    let mut j = Journal::open(&jdir).unwrap();
    assert_eq!(
        j.undo(&preopens).unwrap(),
        2,
        "one entry per path, not per write"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("log.txt")).unwrap(),
        "existing\n"
    );
    assert!(
        !data.join("new.txt").exists(),
        "a file created after the checkpoint is removed"
    );
    j.clear().unwrap();
    assert_eq!(j.undo(&preopens).unwrap(), 0);
}

#[test]
fn damaged_journal_entry_outside_the_preopens_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let jdir = d.path().join("journal");
    std::fs::create_dir(&jdir).unwrap();
    std::fs::write(
        jdir.join("0.json"),
        r#"{"path":{"pre":0,"rel":"../../etc/passwd"},"pre":"absent"}"#,
    )
    .unwrap();
    let preopens = vec![Preopen {
        host: d.path().to_path_buf(),
        guest: ".".into(),
    }];
    let e = Journal::open(&jdir).unwrap().undo(&preopens).unwrap_err();
    assert_eq!(e.kind(), lazarus_vm::VmErrorKind::Corrupt, "{e}");
}
