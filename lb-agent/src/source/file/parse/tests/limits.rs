//! Hostile input: deep nesting, alias bombs, every truncation and
//! corruption give an error, never a crash or a hang.

use std::{fmt::Write as _, path::Path, time::Instant};

use super::KUBECTL_LIST;
use crate::source::file::parse::parse;

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for text in [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  annotations: {}\n",
            "[".repeat(100_000)
        ),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {}{}\n",
            "[".repeat(500),
            "]".repeat(500)
        ),
        (0..200).fold(
            String::from("apiVersion: v1\nkind: Service\nx:\n"),
            |mut s, depth| {
                let _ = writeln!(s, "{}- ", "  ".repeat(depth + 1));
                s
            },
        ),
        format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {{\"labels\": {}{}}}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
    ] {
        assert!(parse(&text, Path::new("deep")).is_err(), "{}", &text[..60]);
    }
    // Unknown fields too are read within the depth limits (the check for
    // repeated keys reads every JSON object): an error, never a crash.
    let json = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"x\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let error = parse(&json, Path::new("deep")).expect_err("too deep");
    assert!(
        error.to_string().ends_with("recursion limit exceeded"),
        "{error}"
    );
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from(
        "apiVersion: v1\nkind: Service\nmetadata:\n  annotations:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for level in 1..12 {
        let previous = level - 1;
        let refs = vec![format!("*a{previous}"); 10].join(", ");
        let _ = writeln!(text, "    a{level}: &a{level} [{refs}]");
    }
    // Expanded, the bomb is 10^12 scalars: it would run out of memory or
    // time long before the bound below. Refused, it takes seconds in a
    // debug build (3.5 to 8 s alone on the 2-core test machine, over 10 s
    // beside other builds): the bound tells the two apart, not speed.
    let start = Instant::now();
    assert!(parse(&text, Path::new("bomb")).is_err());
    assert!(start.elapsed().as_secs() < 120, "{:?}", start.elapsed());
}

#[test]
fn no_panic_on_any_truncation_or_corruption() {
    let json = {
        let value: serde_json::Value = serde_saphyr::from_str(KUBECTL_LIST).expect("yaml");
        serde_json::to_string_pretty(&value).expect("json")
    };
    for text in [KUBECTL_LIST, json.as_str()] {
        for end in (0..text.len()).filter(|&end| text.is_char_boundary(end)) {
            let _ = parse(&text[..end], Path::new("t"));
        }
        // Deterministic corruption: one byte replaced by an interesting one.
        let mut seed = 0x2545_f491_u32;
        let specials = b"-:[]{}\"'&*!|>%@`#,? \n\t0";
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let mut bytes = text.as_bytes().to_vec();
            let at = seed as usize % bytes.len();
            bytes[at] = specials[(seed >> 16) as usize % specials.len()];
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = parse(text, Path::new("t"));
            }
        }
    }
}
