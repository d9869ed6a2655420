//! The decoders of a cluster launcher's output (`mpirun --tag-output`, `srun --label`,
//! ssh): the shim's stdout records and the stderr demultiplexer, on arbitrary bytes, must
//! decode or count them as malformed, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lazarus_net::fuzz_launcher_output(data);
});
