//! lossless: a proxy-wasm filter for Envoy that gives service instances lossless online/offline.
//!
//! Everything but `host` (the glue, compiled into the `.wasm` only) is pure logic, free of
//! proxy-wasm calls, and tested natively. One file, one job; the VM's jobs are the files of
//! `src/vm/`, each entry point below in the file named beside it.
//!
//! # The refresh path: a registry reply becomes membership
//!
//! 1. [`vm::Vm::on_tick`] (every 100 ms in every VM; `src/vm/tick.rs`): [`store::take_poller_lease`]
//!    elects one poller VM per Envoy process; it asks [`poller::PollState::due`] for each
//!    [`service::Service`].
//! 2. The registry's [`registry::Adapter`] builds the request (a login first when needed); the glue
//!    dispatches it ([`vm::Dispatch`]) on the registry's Envoy cluster.
//! 3. [`vm::Vm::on_call_reply`] hands the reply to the refresh path (`src/vm/refresh.rs`): the
//!    adapter turns it into instances ([`registry::Parsed`], built by the service's own
//!    [`instance::BuildOptions`]); [`poller::PollState::on_reply`] applies the keep-last-good rules
//!    ([`membership::Tracker`]) and returns the [`membership::Snapshot`] to publish.
//! 4. The snapshot goes to shared data ([`store::Keys::service`]), stale marks are pruned
//!    ([`marks::prune`]), and the generation is bumped ([`store::bump_gen`]).
//! 5. Every VM notices the generation on its next request or tick ([`vm::Vm::sync`];
//!    `src/vm/mod.rs`, [`view::View::stale`]), decodes the changed snapshots, applies the shared
//!    [`marks::Marks`] and rebuilds its [`balancer::Balancer`] ([`view::ServiceView::rebuild`]).
//!
//! # The request path: a request gets its upstream
//!
//! 1. [`vm::Vm::on_request`] (`src/vm/request.rs`) reads the request's facts through [`vm::Host`]:
//!    admin calls go to the admin endpoints (`src/vm/admin.rs`, [`admin`]); the others to the
//!    router.
//! 2. [`router`] decides, facts in and decision out. Outbound, [`router::Router::outbound`]: the
//!    client's routing headers are removed, the matched cluster picks the service, an ejected
//!    member may get its trial, and [`router::route`] picks the primary (Dubbo's warmup weight,
//!    [`warmup`], through the [`balancer`]) and the fallbacks, honours a pin ([`drain::pin`]), or
//!    refuses with a [`drain::Reason`] ([`drain::local_reply`]). Inbound, [`router::inbound`]: the
//!    instance takes the request unless it drains, is not ready, or is over its warm-up cap
//!    ([`admission`]).
//! 3. The VM applies the [`router::Decision`], the glue the [`vm::Flow`]: the routing header is set,
//!    or the local 503 is sent.
//! 4. [`vm::Vm::on_response`] (`src/vm/response.rs`): the response is judged ([`health::classify`]);
//!    an instance that announced its drain is marked ([`marks::mark_draining`]), one that failed
//!    often enough, or that Envoy left for another attempt, is ejected ([`marks::eject`]) for every
//!    VM; a trial request's success readmits ([`marks::readmit`]); inbound, a draining instance tags
//!    what it served.
//!
//! # Transparent mode (opt-in per service)
//!
//! In a caller's outbound sidecar, a request Envoy matched to a capture cluster
//! (`capture.match_clusters`) carries the caller's own pick as its `destination.address`.
//! [`router::Router::outbound`] looks it up in [`transparent::AddressIndex`] (every service's
//! members and departed addresses) and lets the service's [`transparent::Corrector`] keep it or
//! move it to a serving member by Dubbo's warm-up shares; the kept or moved pick is then routed by
//! [`router::route`] like any other (`src/vm/capture.rs` keeps the index, the plans and the
//! process-wide pick estimate current; the poller records departed addresses on publish).
//!
//! # The health path (opt-in active checks)
//!
//! [`vm::Vm::due`] asks each service's [`prober::Prober`] for the probes due (`src/vm/checks.rs`);
//! the glue sends them through the service's routing cluster; [`vm::Vm::on_call_reply`] records the
//! answer and shares a changed verdict ([`marks::set_health`]).
//!
//! # The online path (opt-in inbound registration)
//!
//! The poller VM asks [`registration::Online`] for the steps due (`src/vm/online.rs`): readiness
//! and self-warm requests through the local cluster, then the registry's register, renew and
//! deregister calls in its wire format ([`registration::nacos`], [`registration::eureka`]). Each
//! answer moves the state machine on; the phase is shared ([`store::Keys::online`]), and every VM
//! answers 503 `not_ready` until the application is ready and warm.
//!
//! Configuration: [`config`] (validated once, immutable). Stats: [`stats`], counted in the VM and
//! flushed to Envoy on the tick. JSON is read by serde_json (derived types) and written by [`emit`].
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod admin;
pub mod admission;
pub mod balancer;
pub mod clock;
pub mod config;
pub mod drain;
pub mod emit;
pub mod headers;
pub mod health;
pub mod instance;
pub mod marks;
pub mod membership;
pub mod poller;
pub mod prober;
pub mod push;
pub mod registration;
pub mod registry;
pub mod router;
pub mod service;
pub mod stall;
pub mod stats;
pub mod store;
pub mod transparent;
pub mod view;
pub mod vm;
pub mod warmup;

#[cfg(target_arch = "wasm32")]
pub mod host;
