//! Trust on first use: the connector remembers each listener's key fingerprint and refuses a
//! different one later. The file is text, one `HOST:PORT FINGERPRINT` per line; `#` comments.
//! Pure logic here; the CLI reads and writes the file.

use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownHosts {
    entries: Vec<(String, String)>,
}

/// What to do with the key a listener presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Matches the pin or `--fingerprint`: go on.
    Trusted,
    /// First contact: go on and remember it.
    PinNew,
    /// Changed, and the user said to accept it: go on and replace the pin.
    Replace { old: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustError {
    Changed {
        host: String,
        pinned: String,
        presented: String,
    },
    Mismatch {
        required: String,
        presented: String,
    },
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Changed {
                host,
                pinned,
                presented,
            } => write!(
                f,
                "the key of {host} has CHANGED: pinned {pinned}, presented {presented}. \
Someone may be intercepting the connection, or the listener's key was replaced. \
If you know the new key is right, run again with --accept-new-key"
            ),
            TrustError::Mismatch {
                required,
                presented,
            } => write!(
                f,
                "the listener's key fingerprint {presented} is not the required {required}"
            ),
        }
    }
}

impl std::error::Error for TrustError {}

impl KnownHosts {
    pub fn parse(text: &str) -> KnownHosts {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.to_lowercase()))
            })
            .collect();
        KnownHosts { entries }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::from(
            "# tunstack cat: listener key fingerprints (SHA-256), pinned on first use\n",
        );
        for (h, f) in &self.entries {
            s.push_str(&format!("{h} {f}\n"));
        }
        s
    }

    pub fn get(&self, host: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, f)| f.as_str())
    }

    pub fn pin(&mut self, host: &str, fp: &str) {
        self.entries.retain(|(h, _)| h != host);
        self.entries.push((host.to_string(), fp.to_lowercase()));
    }

    /// Decides about `presented` for `host` (`HOST:PORT`). `required` is `--fingerprint`;
    /// `accept_change` is `--accept-new-key`.
    pub fn decide(
        &self,
        host: &str,
        presented: &str,
        required: Option<&str>,
        accept_change: bool,
    ) -> Result<Decision, TrustError> {
        let presented = presented.to_lowercase();
        if let Some(req) = required {
            let req = normalize(req);
            if req != presented {
                return Err(TrustError::Mismatch {
                    required: req,
                    presented,
                });
            }
        }
        match self.get(host) {
            Some(p) if p == presented => Ok(Decision::Trusted),
            // An explicit, matching --fingerprint is the user's word that the new key is right.
            Some(p) if accept_change || required.is_some() => {
                Ok(Decision::Replace { old: p.to_string() })
            }
            Some(p) => Err(TrustError::Changed {
                host: host.to_string(),
                pinned: p.to_string(),
                presented,
            }),
            None if required.is_some() => Ok(Decision::PinNew),
            None => Ok(Decision::PinNew),
        }
    }
}

/// Accepts fingerprints typed with colons or spaces, in either case.
pub fn normalize(fp: &str) -> String {
    fp.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aa11";
    const B: &str = "bb22";

    #[test]
    fn test_first_use_pins_then_trusts() {
        let mut kh = KnownHosts::default();
        assert_eq!(kh.decide("h:1", A, None, false), Ok(Decision::PinNew));
        kh.pin("h:1", A);
        let kh = KnownHosts::parse(&kh.to_text());
        assert_eq!(kh.decide("h:1", A, None, false), Ok(Decision::Trusted));
        assert_eq!(kh.decide("h:1", "AA11", None, false), Ok(Decision::Trusted));
    }

    #[test]
    fn test_changed_key_is_refused_unless_accepted() {
        let mut kh = KnownHosts::default();
        kh.pin("h:1", A);
        let e = kh.decide("h:1", B, None, false).unwrap_err();
        assert!(e.to_string().contains("CHANGED"));
        assert_eq!(
            kh.decide("h:1", B, None, true),
            Ok(Decision::Replace { old: A.into() })
        );
        // Another host is independent.
        assert_eq!(kh.decide("h:2", B, None, false), Ok(Decision::PinNew));
    }

    #[test]
    fn test_required_fingerprint() {
        let kh = KnownHosts::default();
        assert_eq!(
            kh.decide("h:1", A, Some("AA:11"), false),
            Ok(Decision::PinNew)
        );
        assert!(matches!(
            kh.decide("h:1", B, Some(A), false),
            Err(TrustError::Mismatch { .. })
        ));
    }

    #[test]
    fn test_parse_skips_comments_and_replaces() {
        let mut kh = KnownHosts::parse("# c\n\nh:1 AA11\nbroken\n");
        assert_eq!(kh.get("h:1"), Some("aa11"));
        kh.pin("h:1", B);
        assert_eq!(kh.get("h:1"), Some(B));
        assert_eq!(kh.to_text().matches("h:1").count(), 1);
    }
}
