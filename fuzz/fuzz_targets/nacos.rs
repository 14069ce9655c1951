//! `registry::nacos::parse_list` (v1 object and v2 envelope).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossless::instance::BuildOptions;
use lossless::registry::nacos::{parse_list, Api};
use lossless_fuzz::check_parser;

fuzz_target!(|data: &[u8]| {
    let build = BuildOptions::default();
    // Every input goes through both APIs: the fixtures seed both shapes without a selector byte.
    for api in [Api::V1, Api::V2] {
        check_parser(|| parse_list(data, api, &build));
    }
});
