//! `registry::consul::parse_with` (`GET /v1/health/service/{name}`), with each address choice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lossless::instance::BuildOptions;
use lossless::registry::consul::{parse_with, Address};
use lossless_fuzz::check_parser;

fuzz_target!(|data: &[u8]| {
    let build = BuildOptions::default();
    for choice in [Address::Service, Address::Node, Address::Tagged("wan".into())] {
        check_parser(|| parse_with(data, &build, &choice));
    }
});
