//! Which upstream statuses become stored, replayable outcomes.
//!
//! A stored status is final for its key: retries replay it. Anything else releases the key
//! so that a retry executes again. The default stores 2xx and 4xx except the 4xx answers
//! that mean "try again" (408 timeout, 409 conflict, 425 too early, 429 too many requests):
//! storing those would poison the key with a transient failure.

/// Which upstream statuses are final for their key, stored and replayed to every retry;
/// every other status releases the key. The default stores 2xx and 4xx except 408, 409,
/// 425 and 429 (the `stored_statuses` setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPolicy {
    /// Inclusive ranges of statuses that are stored.
    pub ranges: Vec<(u16, u16)>,
    /// Statuses never stored even when inside a range.
    pub except: Vec<u16>,
}

impl Default for StatusPolicy {
    fn default() -> Self {
        StatusPolicy {
            ranges: vec![(200, 299), (400, 499)],
            except: vec![408, 409, 425, 429],
        }
    }
}

impl StatusPolicy {
    /// Whether an answer with `status` is stored and replayed, rather than passed on with the
    /// key released.
    pub fn is_stored(&self, status: u16) -> bool {
        !self.except.contains(&status)
            && self
                .ranges
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// Parses entries such as `"2xx"`, `"201"`, `"400-404"`, `"!409"` (an exception).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut policy = StatusPolicy {
            ranges: Vec::new(),
            except: Vec::new(),
        };
        for entry in entries {
            let e = entry.as_ref().trim();
            if let Some(code) = e.strip_prefix('!') {
                policy.except.push(parse_status(code)?);
            } else if let Some(class) = e.strip_suffix("xx").or_else(|| e.strip_suffix("XX")) {
                let c: u16 = class
                    .parse()
                    .ok()
                    .filter(|c| (1..=5).contains(c))
                    .ok_or_else(|| format!("`{e}` is not a status class such as 2xx"))?;
                policy.ranges.push((c * 100, c * 100 + 99));
            } else if let Some((lo, hi)) = e.split_once('-') {
                let (lo, hi) = (parse_status(lo)?, parse_status(hi)?);
                if lo > hi {
                    return Err(format!("`{e}`: the range is empty"));
                }
                policy.ranges.push((lo, hi));
            } else {
                let s = parse_status(e)?;
                policy.ranges.push((s, s));
            }
        }
        Ok(policy)
    }
}

fn parse_status(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| format!("`{s}` is not an HTTP status between 100 and 599"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_stores_final_answers_only() {
        let p = StatusPolicy::default();
        for s in [200, 201, 204, 299, 400, 404, 410, 422, 499] {
            assert!(p.is_stored(s), "{s}");
        }
        for s in [100, 301, 408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(!p.is_stored(s), "{s}");
        }
    }

    #[test]
    fn parses_entries() {
        let p = StatusPolicy::parse(&["2xx", "404", "410-411", "!204"]).unwrap();
        assert!(p.is_stored(200) && p.is_stored(404) && p.is_stored(411));
        assert!(!p.is_stored(204) && !p.is_stored(400) && !p.is_stored(500));
        assert!(StatusPolicy::parse(&["7xx"]).is_err());
        assert!(StatusPolicy::parse(&["abc"]).is_err());
        assert!(StatusPolicy::parse(&["500-400"]).is_err());
    }
}
