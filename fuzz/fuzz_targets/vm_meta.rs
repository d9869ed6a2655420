//! VM checkpoint metadata (`vm.meta`) and modules given to `lazarus vm run` are untrusted
//! bytes: decoding and the load-time check must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazarus_vm::VmMeta::decode(data);
    let _ = lazarus_vm::instrument::check(data);
});
