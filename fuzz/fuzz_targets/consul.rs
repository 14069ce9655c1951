//! `registry::consul::parse` (`GET /v1/health/service/{name}`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossless::instance::BuildOptions;
use lossless::registry::consul::parse;
use lossless_fuzz::check_parser;

fuzz_target!(|data: &[u8]| {
    let build = BuildOptions::default();
    check_parser(|| parse(data, &build));
});
