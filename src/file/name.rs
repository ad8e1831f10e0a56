//! Making a received file name safe to create: the sender chooses it, so it is hostile input.

/// A name that is a single, ordinary path component: no separators, no `.`/`..`, no control
/// characters, no leading dot (hidden or special files), at most 200 bytes. Never empty.
pub fn sanitize(name: &str) -> String {
    let parts: Vec<String> = name
        .split(['/', '\\'])
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .map(|p| {
            p.chars()
                .filter(|c| !c.is_control())
                .map(|c| if c == ':' { '_' } else { c })
                .collect::<String>()
        })
        .filter(|p| !p.trim().is_empty())
        .collect();
    let joined = parts.join("_");
    let trimmed = joined.trim().trim_start_matches('.');
    let mut out = crate::msg::wire::truncate_str(trimmed, 200).to_string();
    // A name made only of dots (after the above) would still be special.
    if out.is_empty() || out.chars().all(|c| c == '.') {
        out = String::from("unnamed");
    }
    out
}

/// `name` if `taken` says it is free, else `stem-1.ext`, `stem-2.ext`, … (bounded; the last try
/// appends a large counter so the caller always gets an answer).
pub fn unique(name: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(name) {
        return name.to_string();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 1..10_000u32 {
        let cand = format!("{stem}-{n}{ext}");
        if !taken(&cand) {
            return cand;
        }
    }
    format!("{stem}-{}{ext}", u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sanitize_strips_traversal() {
        assert_eq!(sanitize("../../etc/x"), "etc_x");
        assert_eq!(sanitize("/etc/passwd"), "etc_passwd");
        assert_eq!(sanitize("..\\..\\win.ini"), "win.ini");
        assert_eq!(sanitize(".."), "unnamed");
        assert_eq!(sanitize(""), "unnamed");
        assert_eq!(sanitize("a/./b"), "a_b");
    }

    #[test]
    fn test_sanitize_drops_control_and_hidden() {
        assert_eq!(sanitize("re\u{0}port\n.txt"), "report.txt");
        assert_eq!(sanitize(".bashrc"), "bashrc");
        assert_eq!(sanitize("...."), "unnamed");
        assert_eq!(sanitize("C:evil"), "C_evil");
        assert_eq!(sanitize("ünïcødé.pdf"), "ünïcødé.pdf");
        let long = "x".repeat(1000);
        assert_eq!(sanitize(&long).len(), 200);
        for n in ["../../etc/x", "a/b", "\u{7f}", "/"] {
            let s = sanitize(n);
            assert!(!s.contains('/') && !s.contains('\\') && s != ".." && !s.is_empty());
        }
    }

    #[test]
    fn test_unique_adds_suffix() {
        let taken = ["a.txt", "a-1.txt", "noext"];
        let t = |n: &str| taken.contains(&n);
        assert_eq!(unique("b.txt", t), "b.txt");
        assert_eq!(unique("a.txt", t), "a-2.txt");
        assert_eq!(unique("noext", t), "noext-1");
    }
}
