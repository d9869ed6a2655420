//! The decoders of the journal, the base state and the part index on random and mutated
//! bytes (stable CI's stand-in for `fuzz/fuzz_targets/files_decode.rs`): never a panic.

mod common;

use common::Rig;
use proptest::prelude::*;
use std::io::Write;

/// A real journal and state, to mutate (made once).
fn real_files() -> (Vec<u8>, Vec<u8>) {
    static ONCE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    ONCE.get_or_init(make).clone()
}

fn make() -> (Vec<u8>, Vec<u8>) {
    let mut rig = Rig::in_memory();
    let f = rig.restored(None, false).unwrap();
    f.create_dir("d").unwrap();
    f.write("d/a", vec![1u8; 9000]).unwrap();
    rig.checkpoint(&f);
    f.append("d/a").unwrap().write_all(b"more").unwrap();
    f.rename("d/a", "b").unwrap();
    let meta = rig.root.join(".lazarus/rank-0");
    (
        std::fs::read(meta.join("journal")).unwrap(),
        std::fs::read(meta.join("state")).unwrap(),
    )
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = lazarus_files::decode_untrusted(&bytes);
    }

    #[test]
    fn mutated_journals_decode_a_prefix(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let (journal, state) = real_files();
        let whole = lazarus_files::decode_untrusted(&journal);
        prop_assert_eq!(whole, 4, "header, touch, resized, rename");
        for base in [journal, state] {
            let mut b = base.clone();
            for (i, x) in &flips {
                let k = i.index(b.len());
                b[k] ^= x | 1;
            }
            let n = lazarus_files::decode_untrusted(&b);
            prop_assert!(n <= whole.max(lazarus_files::decode_untrusted(&base)));
            let _ = lazarus_files::decode_untrusted(&base[..cut.index(base.len() + 1)]);
        }
    }
}
