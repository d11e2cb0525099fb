//! What a Bedrock model identifier names, and which inference profile serves a model from a region.
//!
//! A `ModelEndpoint`'s `modelId` may be a base model id (`anthropic.claude-haiku-4-5-20251001-v1:0`),
//! a system-defined cross-region inference profile id (the base id behind `us.`, `eu.`, `apac.`,
//! `jp.`, `au.`, `ca.`, `us-gov.` or `global.`), or a foundation-model or inference-profile ARN.
//! Newer models (Claude 3.7 and later, Nova Premier and 2, Llama 3.2 and later) cannot be called by
//! their base id on demand: Bedrock answers `ValidationException: Invocation of model ID … with
//! on-demand throughput isn’t supported`, and the caller must name a profile instead.

/// Prefixes of geographic cross-region inference profile ids.
pub const GEOGRAPHIC_PREFIXES: &[&str] = &["us", "eu", "apac", "jp", "au", "ca", "us-gov"];
/// The prefix of global cross-region inference profile ids.
pub const GLOBAL_PREFIX: &str = "global";

/// How an identifier reaches its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// The base model in the calling region (a base id or a foundation-model ARN).
    InRegion,
    /// A geographic cross-region profile: its prefix (`us`, `eu`, …).
    Geographic(&'a str),
    /// The `global.` cross-region profile.
    Global,
}

/// A parsed model identifier: the base model id and the route to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelRef<'a> {
    pub base: &'a str,
    pub route: Route<'a>,
    /// The region an ARN names; `None` for plain ids.
    pub arn_region: Option<&'a str>,
}

impl ModelRef<'_> {
    /// Whether the identifier names an inference profile rather than the model itself.
    pub fn is_profile(&self) -> bool {
        self.route != Route::InRegion
    }
}

/// Parses a base id, profile id, or foundation-model / inference-profile ARN. `None` for anything
/// else, e.g. application inference profiles and provisioned models, whose ARNs are opaque.
pub fn parse(model_id: &str) -> Option<ModelRef<'_>> {
    let (id, arn_region, arn_kind) = match model_id.strip_prefix("arn:") {
        None => (model_id, None, None),
        Some(arn) => {
            // partition:service:region:account:resource-type/resource-id; the id may hold ':'.
            let mut parts = arn.splitn(5, ':');
            let (partition, service) = (parts.next()?, parts.next()?);
            let (region, _account, resource) = (parts.next()?, parts.next()?, parts.next()?);
            let (kind, id) = resource.split_once('/')?;
            let known_kind = matches!(kind, "foundation-model" | "inference-profile");
            if !partition.starts_with("aws") || service != "bedrock" || !known_kind {
                return None;
            }
            (id, Some(region), Some(kind))
        }
    };
    let (base, route) = match id.split_once('.') {
        Some((GLOBAL_PREFIX, base)) => (base, Route::Global),
        Some((prefix, base)) if GEOGRAPHIC_PREFIXES.contains(&prefix) => {
            (base, Route::Geographic(prefix))
        }
        _ => (id, Route::InRegion),
    };
    // A foundation-model ARN names the model itself; an inference-profile ARN names a profile.
    let consistent = match arn_kind {
        Some("foundation-model") => route == Route::InRegion,
        Some(_) => route != Route::InRegion,
        None => true,
    };
    (!base.is_empty() && consistent).then_some(ModelRef {
        base,
        route,
        arn_region,
    })
}

/// The base model id behind an identifier; the identifier itself when it cannot be parsed.
pub fn base_model_id(model_id: &str) -> &str {
    parse(model_id).map_or(model_id, |m| m.base)
}

/// The geographic profile prefixes a call from `region` may use, most specific first: Bedrock
/// offers `jp.` and `au.` profiles for newer models and `apac.` for older ones, so Tokyo tries
/// `jp.` before `apac.`. Empty for regions with no geographic profile known here.
pub fn geographic_prefixes(region: &str) -> &'static [&'static str] {
    match region {
        r if r.starts_with("us-gov-") => &["us-gov"],
        r if r.starts_with("us-") => &["us"],
        r if r.starts_with("ca-") => &["ca", "us"],
        r if r.starts_with("eu-") => &["eu"],
        "ap-northeast-1" | "ap-northeast-3" => &["jp", "apac"],
        "ap-southeast-2" | "ap-southeast-4" => &["au", "apac"],
        r if r.starts_with("ap-") => &["apac"],
        _ => &[],
    }
}

/// The profile id of `base` with `prefix` (`us` → `us.anthropic…`).
pub fn profile_id(prefix: &str, base: &str) -> String {
    format!("{prefix}.{base}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";

    #[test]
    fn ids_profiles_and_arns_parse() {
        let plain = parse(HAIKU).unwrap();
        assert_eq!((plain.base, plain.route), (HAIKU, Route::InRegion));
        assert!(!plain.is_profile());
        let us = parse("us.anthropic.claude-haiku-4-5-20251001-v1:0").unwrap();
        assert_eq!((us.base, us.route), (HAIKU, Route::Geographic("us")));
        let gov = parse("us-gov.anthropic.claude-haiku-4-5-20251001-v1:0").unwrap();
        assert_eq!(gov.route, Route::Geographic("us-gov"));
        let global = parse("global.anthropic.claude-haiku-4-5-20251001-v1:0").unwrap();
        assert_eq!((global.base, global.route), (HAIKU, Route::Global));
        let arn = format!("arn:aws:bedrock:eu-west-1::foundation-model/{HAIKU}");
        let fm = parse(&arn).unwrap();
        assert_eq!((fm.base, fm.arn_region), (HAIKU, Some("eu-west-1")));
        let arn = format!("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.{HAIKU}");
        assert_eq!(parse(&arn).unwrap().route, Route::Geographic("us"));
    }

    #[test]
    fn what_is_not_a_model_id_does_not_parse() {
        for id in [
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123",
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123",
            "arn:aws:s3:::bucket/key",
            &format!("arn:aws:bedrock:us-east-1::foundation-model/us.{HAIKU}"),
            &format!("arn:aws:bedrock:us-east-1:123456789012:inference-profile/{HAIKU}"),
            "us.",
        ] {
            assert_eq!(parse(id), None, "{id}");
        }
        assert_eq!(base_model_id("opaque"), "opaque");
    }

    #[test]
    fn regions_map_to_their_geographies() {
        assert_eq!(geographic_prefixes("us-east-1"), ["us"]);
        assert_eq!(geographic_prefixes("us-gov-west-1"), ["us-gov"]);
        assert_eq!(geographic_prefixes("eu-central-1"), ["eu"]);
        assert_eq!(geographic_prefixes("ap-northeast-1"), ["jp", "apac"]);
        assert_eq!(geographic_prefixes("ap-southeast-2"), ["au", "apac"]);
        assert_eq!(geographic_prefixes("ap-south-1"), ["apac"]);
        assert!(geographic_prefixes("sa-east-1").is_empty());
    }
}
