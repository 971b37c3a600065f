//! Bytes -> `lb_agent::source::file::parse` -> (on success) `lb_agent::translate::translate`,
//! as the file source does with a services file.
//!
//! Asserts what a user of `--services-file` relies on: no input makes either
//! step panic (or abort, overflow the stack, or run out of memory: libFuzzer
//! reports those too), and every error is one line (the agent logs it as one
//! log line; a multi-line message would be split or mangled by log shippers),
//! both a parse error and each translation problem.

#![no_main]

use std::path::Path;

use lb_agent::{
    source::file,
    translate::{self, NodeContext, Options},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The file source reads the file with `read_to_string`: text that is not
    // UTF-8 is a read error before the parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match file::parse(text, Path::new("services.yaml")) {
        Ok(objects) => {
            // Both node contexts: topology hints and internalTrafficPolicy
            // take other paths with a node name and zone.
            for node in [
                NodeContext::default(),
                NodeContext {
                    node_name: Some("node-1".to_owned()),
                    zone: Some("zone-a".to_owned()),
                },
            ] {
                let t = translate::translate(
                    &objects.services,
                    &objects.endpoint_slices,
                    &node,
                    &Options::default(),
                );
                for problem in &t.problems {
                    let line = problem.to_string();
                    assert!(
                        !line.contains(['\n', '\r']),
                        "a translation problem spans several lines: {line:?}"
                    );
                }
            }
        }
        Err(e) => {
            let line = e.to_string();
            assert!(
                !line.contains(['\n', '\r']),
                "a parse error spans several lines: {line:?}"
            );
            assert!(
                line.starts_with("services.yaml: "),
                "a parse error does not start with the file: {line:?}"
            );
        }
    }
});
