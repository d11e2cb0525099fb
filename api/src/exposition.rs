//! Metrics exposition shared by the operator and the sidecar.

/// The content type and body to answer a scrape with: OpenMetrics when the `Accept` header asks
/// for it (Prometheus does), else the classic text format (`curl`, `promtool check metrics`).
pub fn negotiate(accept: Option<&str>, openmetrics_page: String) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            openmetrics_page,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            openmetrics_to_text(&openmetrics_page),
        )
    }
}

/// Rewrites an OpenMetrics page as Prometheus text 0.0.4.
pub fn openmetrics_to_text(page: &str) -> String {
    let counters: std::collections::HashSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_get_total_in_help_and_type_and_eof_goes() {
        let page = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n# HELP b Up.\n# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(page),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP b Up.\n# TYPE b gauge\nb 1\n"
        );
    }
}
