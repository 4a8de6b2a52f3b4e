//! Byte quantities with dCache's units: `k K M G T P` are powers of 1000, `Ki Mi Gi Ti Pi`
//! powers of 1024 (docs/dcache-compatibility.md#the-expression-language). A trailing `B` is allowed: `10GiB`, `500M`.

/// The multiplier of a unit suffix, if it is one.
pub fn unit_multiplier(unit: &str) -> Option<u64> {
    Some(match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    })
}

/// Parses `123`, `10G`, `1.5Ti`, `500MiB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix('B').unwrap_or(t);
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = unit_multiplier(unit.trim())
        .ok_or_else(|| format!("{text:?}: unknown unit {unit:?} (use k, M, G, T, P or Ki, Mi, Gi, Ti, Pi)"))?;
    if num.is_empty() {
        return Err(format!("{text:?}: expected a number"));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| format!("{text:?}: too large"));
    }
    let f: f64 = num.parse().map_err(|_| format!("{text:?}: not a number"))?;
    let v = f * mult as f64;
    if !(0.0..1.8e19).contains(&v) {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, want) in [
            ("0", 0),
            ("123", 123),
            ("10G", 10_000_000_000),
            ("10GiB", 10 << 30),
            ("1.5Ki", 1536),
            ("2k", 2000),
            ("500MB", 500_000_000),
        ] {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
        for bad in ["", "G", "10X", "1..2", "-5"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
