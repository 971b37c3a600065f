//! Endpoint conditions: ready endpoints serve; serving and terminating ones
//! only when none is ready.

use super::{assert_clean, backends, run, web, web_slice};
use crate::translate::testing::{endpoint, endpoint_at, ready, terminating};

#[test]
fn unset_conditions_mean_ready_serving_not_terminating() {
    let slices = [web_slice(
        "web-1",
        [
            endpoint("10.1.0.1"),
            endpoint("10.1.0.2").with_empty_conditions(),
        ],
    )];
    let t = run(&[web()], &slices);
    assert_eq!(
        backends(&t, "10.0.0.1:80/TCP"),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
}

#[test]
fn only_the_first_address_of_an_endpoint_is_used() {
    let slices = [web_slice("web-1", [endpoint_at(&["10.1.0.1", "10.1.0.2"])])];
    assert_eq!(
        backends(&run(&[web()], &slices), "10.0.0.1:80/TCP"),
        ["10.1.0.1:8080"]
    );
}

#[test]
fn not_ready_endpoints_are_not_used_while_some_are_ready() {
    let slices = [web_slice(
        "web-1",
        [
            ready("10.1.0.1"),
            terminating("10.1.0.2"),
            endpoint("10.1.0.3").ready(false),
        ],
    )];
    assert_eq!(
        backends(&run(&[web()], &slices), "10.0.0.1:80/TCP"),
        ["10.1.0.1:8080"]
    );
}

#[test]
fn all_terminating_falls_back_to_serving_terminating_endpoints() {
    let slices = [web_slice(
        "web-1",
        [
            terminating("10.1.0.1"),
            // serving unset means serving
            endpoint("10.1.0.2").ready(false).terminating(true),
            // terminating and not serving: never used
            endpoint("10.1.0.3")
                .ready(false)
                .serving(false)
                .terminating(true),
            // not ready, not terminating (starting up): never used
            endpoint("10.1.0.4")
                .ready(false)
                .serving(true)
                .terminating(false),
        ],
    )];
    let t = run(&[web()], &slices);
    assert_clean(&t);
    assert_eq!(
        backends(&t, "10.0.0.1:80/TCP"),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
}

#[test]
fn no_serving_endpoint_refuses() {
    let slices = [web_slice(
        "web-1",
        [endpoint("10.1.0.3")
            .ready(false)
            .serving(false)
            .terminating(true)],
    )];
    assert_eq!(
        backends(&run(&[web()], &slices), "10.0.0.1:80/TCP"),
        Vec::<String>::new()
    );
}
