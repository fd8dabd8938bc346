//! libFuzzer entry: one framed request per input (see `blockhost_root_agent::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blockhost_root_agent::fuzz::request(data);
});
