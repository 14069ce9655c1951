//! lossless: a proxy-wasm filter for Envoy that gives service instances lossless online/offline.
//!
//! Everything but [`host`] is pure logic, free of proxy-wasm calls, and tested natively.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod balancer;
pub mod clock;
pub mod config;
pub mod drain;
pub mod instance;
pub mod membership;
pub mod registry;
pub mod runtime;
pub mod warmup;

#[cfg(target_arch = "wasm32")]
pub mod host;
