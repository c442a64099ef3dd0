//! vhd images: open one layer from arbitrary bytes, walk its allocation map
//! and read from every run (see `cairn_fuzz::exercise_layer`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_fuzz::exercise_layer(cairn_disk::Format::Vhd, data);
});
