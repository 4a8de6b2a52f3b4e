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

// The repository stands alone: no comment or document cites a document outside it (the design
// notes and the dCache description the project was started from). What dCache does, and where
// Tidepool differs, is in docs/dcache-compatibility.md; comments cite that. The needles are put
// together from pieces so that this file does not cite anything itself.

/// What a citation of an outside document looks like.
fn needles() -> Vec<String> {
    let mut needles: Vec<String> = [
        concat!("reference ", "§"),
        concat!("BRI", "EF"),
        concat!("../", "shared"),
        concat!("dcache-", "migration.md"),
        concat!("STY", "LE.md"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A bare section sign followed by a digit (a numbered section of some other document).
    needles.extend((0..10).map(|d| format!("§{d}")));
    needles
}

/// The lines of `text` that cite an outside document, as `line: text`.
fn citations(text: &str) -> Vec<String> {
    let needles = needles();
    text.lines()
        .enumerate()
        .filter(|(_, line)| needles.iter().any(|n| line.contains(n.as_str())))
        .map(|(i, line)| format!("{}: {}", i + 1, line.trim()))
        .collect()
}

#[test]
fn no_tracked_file_cites_a_document_outside_the_repository() {
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("git")
        .args(["-C", &root, "ls-files", "-z"])
        .output()
        .expect("run git ls-files (the test reads the repository's tracked files)");
    assert!(out.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<&[u8]> = out.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()).collect();
    assert!(files.len() > 50, "git ls-files listed only {} files", files.len());
    let mut found = Vec::new();
    for path in files {
        let path = String::from_utf8_lossy(path);
        // A file listed but deleted in the work tree is not checked.
        let Ok(bytes) = std::fs::read(format!("{root}/{path}")) else { continue };
        for line in citations(&String::from_utf8_lossy(&bytes)) {
            found.push(format!("{path}:{line}"));
        }
    }
    assert!(
        found.is_empty(),
        "these lines cite documents outside the repository; cite docs/dcache-compatibility.md (or \
         another file of the repository) or say it in your own words:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_citation_of_an_outside_document_is_found() {
    let text = format!(
        "fine\n/// the scheduler ({} 3.5)\n/// see {}\n/// (dCache did, {} item 25)\n/// see docs/dcache-compatibility.md#scheduling\n",
        concat!("reference ", "§"),
        concat!("../", "shared/design"),
        concat!("§", "10"),
    );
    let lines: Vec<usize> =
        citations(&text).iter().map(|l| l.split(':').next().unwrap_or("").parse().unwrap_or(0)).collect();
    assert_eq!(lines, [2, 3, 4]);
}
