//! Image URL prefixes a pod allows its sidecar to fetch from (the `image-url-allow` annotation):
//! read the same way by the webhook, which denies a malformed one, and by the sidecar.

/// One allowed prefix: a scheme and authority matched exactly, a path matched as a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPrefix {
    pub scheme: String,
    /// `host[:port]`, lower-cased.
    pub authority: String,
    /// Ends with `/`.
    pub path: String,
}

/// An `http(s)://host[:port]/path/` prefix, or why it is not one.
pub fn parse_prefix(entry: &str) -> Result<UrlPrefix, &'static str> {
    let (scheme, rest) = entry.split_once("://").ok_or("not a URL")?;
    if scheme != "https" && scheme != "http" {
        return Err("only http and https");
    }
    if entry.chars().any(char::is_whitespace) {
        return Err("not a URL");
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.is_empty() {
        return Err("no host");
    }
    if authority.contains('@') {
        return Err("credentials in a URL are not allowed");
    }
    if entry.contains(['?', '#']) {
        return Err("a prefix has no query or fragment");
    }
    if !path.ends_with('/') {
        return Err("the path must end with / (a prefix of paths, not of names)");
    }
    if has_dot_segment(path) {
        return Err("the path has . or .. segments, or an encoded /");
    }
    Ok(UrlPrefix {
        scheme: scheme.to_owned(),
        authority: authority.to_ascii_lowercase(),
        path: path.to_owned(),
    })
}

/// Whether a path has a `.` or `..` segment, percent-encoded or not, or an encoded `/`: the
/// server would resolve it out of the prefix the path seems to be under.
pub fn has_dot_segment(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f")
        || lower.split('/').any(|segment| {
            let decoded = segment.replace("%2e", ".");
            decoded == "." || decoded == ".."
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_read_and_bad_ones_say_why() {
        assert_eq!(
            parse_prefix("https://Assets.example.com:8443/public/").unwrap(),
            UrlPrefix {
                scheme: "https".into(),
                authority: "assets.example.com:8443".into(),
                path: "/public/".into(),
            }
        );
        for bad in [
            "assets.example.com/",
            "ftp://host/",
            "https://host/prefix",
            "https://host",
            "https://u:p@host/",
            "https://host/a/../",
            "https://host/a/%2E%2e/",
            "https://host/?q=1",
            "https:///path/",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad} was accepted");
        }
        assert!(has_dot_segment("/img/..%2fprivate.png"));
        assert!(!has_dot_segment("/img/cat.v2.png"));
    }
}
