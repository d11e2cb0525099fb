//! Images fetched from URLs the pod's owner allowed (`AI_SIDECAR_IMAGE_URL_ALLOW`, set from the
//! pod's `ai.kernelpanic09.io/image-url-allow` annotation). Fetching whatever URL a prompt names
//! would let anyone who writes prompts make the pod call any address it reaches (SSRF), so by
//! default nothing is fetched; with a list, only URLs under one of its prefixes are, with no
//! redirect followed, within the size Bedrock takes for an image.

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use k8s_ai_api::image_url::{UrlPrefix, has_dot_segment, parse_prefix as parse_prefix_text};

use crate::{
    bedrock::{HttpsClient, MAX_IMAGE_BYTES},
    errors::ApiError,
};

/// How long one image may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The allow-list could not be read: the sidecar does not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "image URL allow-list entry {entry:?}: {reason} (expected https://host[:port]/path/, comma-separated)"
)]
pub struct AllowListError {
    entry: String,
    reason: &'static str,
}

/// Fetches images from allowed URLs.
pub struct ImageFetcher {
    allowed: Vec<UrlPrefix>,
    http: Option<HttpsClient>,
}

impl ImageFetcher {
    /// From the comma-separated prefixes of `AI_SIDECAR_IMAGE_URL_ALLOW` (empty: fetch nothing).
    pub fn new(list: &str) -> Result<Self, AllowListError> {
        let allowed = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_prefix)
            .collect::<Result<Vec<_>, _>>()?;
        let http = if allowed.is_empty() {
            None
        } else {
            Some(crate::bedrock::https_client().map_err(|_| AllowListError {
                entry: list.to_owned(),
                reason: "no TLS client could be built",
            })?)
        };
        Ok(ImageFetcher { allowed, http })
    }

    /// Whether any URL may be fetched.
    pub fn enabled(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Why `url` may not be fetched, if it may not.
    fn refusal(&self, url: &Uri) -> Option<String> {
        let (Some(scheme), Some(authority)) = (url.scheme_str(), url.authority()) else {
            return Some("it is not an absolute http(s) URL".to_owned());
        };
        if authority.as_str().contains('@') {
            return Some("it carries credentials".to_owned());
        }
        let path = url.path();
        if has_dot_segment(path) {
            return Some("its path has . or .. segments, or an encoded /".to_owned());
        }
        let allowed = self.allowed.iter().any(|p| {
            p.scheme.eq_ignore_ascii_case(scheme)
                && p.authority.eq_ignore_ascii_case(authority.as_str())
                && path.starts_with(&p.path)
        });
        (!allowed).then(|| {
            "it is under none of the pod's allowed prefixes (annotation ai.kernelpanic09.io/image-url-allow)".to_owned()
        })
    }

    /// The media type and bytes at `url`, or a 400 (`invalid_image_url`) saying why not; `at`
    /// names where the URL was.
    pub async fn fetch(&self, url: &str, at: &str) -> Result<(String, Vec<u8>), ApiError> {
        let refused = |why: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_image_url",
                format!("{at}: {} is not fetched: {why}", shown(url)),
            )
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| refused("it is not a valid URL".to_owned()))?;
        let Some(http) = &self.http else {
            return Err(refused(
                "the pod allows no image URL (annotation ai.kernelpanic09.io/image-url-allow)"
                    .to_owned(),
            ));
        };
        if let Some(why) = self.refusal(&uri) {
            return Err(refused(why));
        }
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "image/*")
            .body(Full::new(Bytes::new()))
            .map_err(|e| refused(e.to_string()))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, http.request(request))
            .await
            .map_err(|_| refused(format!("no answer within {FETCH_TIMEOUT:?}")))?
            .map_err(|e| refused(format!("the request failed: {e}")))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(refused(format!(
                "it answered {status}, a redirect, which is not followed (it could leave the allowed prefixes)"
            )));
        }
        if status != StatusCode::OK {
            return Err(refused(format!("it answered {status}")));
        }
        let media_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_IMAGE_BYTES).collect(),
        )
        .await
        .map_err(|_| refused(format!("its body took over {FETCH_TIMEOUT:?}")))?
        .map_err(|_| {
            refused(format!(
                "its body is over {MAX_IMAGE_BYTES} bytes (Bedrock's limit for an image) or broke off"
            ))
        })?;
        Ok((media_type, body.to_bytes().to_vec()))
    }
}

fn parse_prefix(entry: &str) -> Result<UrlPrefix, AllowListError> {
    parse_prefix_text(entry).map_err(|reason| AllowListError {
        entry: entry.to_owned(),
        reason,
    })
}

fn shown(url: &str) -> String {
    url.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_under_an_allowed_prefix_may_be_fetched() {
        let fetcher =
            ImageFetcher::new("https://assets.example.com/public/, http://127.0.0.1:9000/img/")
                .unwrap();
        let refusal = |url: &str| fetcher.refusal(&url.parse().unwrap());
        assert_eq!(refusal("https://assets.example.com/public/cat.png"), None);
        assert_eq!(refusal("https://ASSETS.example.com/public/a/b.png"), None);
        assert_eq!(refusal("http://127.0.0.1:9000/img/x.png"), None);
        for refused in [
            "https://assets.example.com/private/cat.png",
            "https://assets.example.com/public/../private/cat.png",
            "https://assets.example.com/public/%2e%2e/private/cat.png",
            "https://assets.example.com/public/..%2fprivate.png",
            "http://assets.example.com/public/cat.png",
            "https://assets.example.com:8443/public/cat.png",
            "https://assets.example.com.evil.test/public/cat.png",
            "https://user@assets.example.com/public/cat.png",
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:9001/img/x.png",
        ] {
            assert!(refusal(refused).is_some(), "{refused} was allowed");
        }
    }

    #[test]
    fn allow_list_entries_are_checked_at_start() {
        assert!(!ImageFetcher::new("").unwrap().enabled());
        for bad in [
            "assets.example.com/",
            "ftp://host/",
            "https://host/prefix",
            "https://u:p@host/",
            "https://host/a/../",
            "https://host/?q=1",
        ] {
            assert!(ImageFetcher::new(bad).is_err(), "{bad} was accepted");
        }
    }
}
