//! The operator documentation against the code: every error code a pool can send
//! (`ErrorCode::ALL`) has its row, number and name, in docs/troubleshooting.md and in
//! docs/errors.md.

use tidepool_p2p::error::ErrorCode;

fn doc(name: &str) -> String {
    let path = format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The codes whose table row (`| <rc> | `<name>` |`) is missing from `text`.
fn missing_rows(text: &str) -> Vec<String> {
    ErrorCode::ALL
        .iter()
        .filter(|code| !text.contains(&format!("| {} | `{}` |", code.as_u32(), code.name())))
        .map(|code| format!("{} {}", code.as_u32(), code.name()))
        .collect()
}

#[test]
fn every_error_code_is_in_the_troubleshooting_catalogue() {
    let missing = missing_rows(&doc("troubleshooting.md"));
    assert!(missing.is_empty(), "docs/troubleshooting.md has no row for: {missing:?}");
}

#[test]
fn every_error_code_is_in_the_error_list() {
    let missing = missing_rows(&doc("errors.md"));
    assert!(missing.is_empty(), "docs/errors.md has no row for: {missing:?}");
}

#[test]
fn a_missing_code_is_found() {
    let text = doc("troubleshooting.md").replace("| 10020 | `Locked` |", "| 10020 | Locked |");
    assert_eq!(missing_rows(&text), ["10020 Locked"]);
}
