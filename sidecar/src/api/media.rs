//! Images and documents as the APIs carry them (data URLs, base64 sources), read into the
//! sidecar's blocks. An image URL is fetched only under a prefix the pod allows
//! ([`crate::fetch`]): fetching any URL from the pod would let anyone who can write a prompt make
//! the pod call any address it reaches (SSRF).

use serde_json::{Value, json};

use crate::{
    bedrock::{Block, DocumentFormat, ImageFormat, MAX_IMAGES},
    errors::ApiError,
    fetch::ImageFetcher,
};

/// Where an API puts an image's URL.
#[derive(Debug, Clone, Copy)]
pub(super) enum ImageUrls {
    /// OpenAI's `{"type": "image_url", "image_url": {"url"}}`.
    OpenAi,
    /// Anthropic's `{"type": "image", "source": {"type": "url", "url"}}`.
    Anthropic,
}

/// Images fetched at once for one request.
const FETCH_CONCURRENCY: usize = 4;

impl ImageUrls {
    fn url(self, part: &Value) -> Option<&str> {
        let url = match self {
            ImageUrls::OpenAi if part["type"] == "image_url" => part["image_url"]["url"].as_str(),
            ImageUrls::Anthropic if part["type"] == "image" && part["source"]["type"] == "url" => {
                part["source"]["url"].as_str()
            }
            _ => None,
        }?;
        (url.starts_with("https://") || url.starts_with("http://")).then_some(url)
    }

    fn at(self, message: usize, part: usize) -> String {
        match self {
            ImageUrls::OpenAi => format!("messages[{message}].content[{part}].image_url.url"),
            ImageUrls::Anthropic => format!("messages[{message}].content[{part}].source.url"),
        }
    }

    fn inline(self, part: &mut Value, media_type: &str, bytes: &[u8]) {
        let data = aws_smithy_types::base64::encode(bytes);
        match self {
            ImageUrls::OpenAi => {
                part["image_url"]["url"] = format!("data:{media_type};base64,{data}").into();
            }
            ImageUrls::Anthropic => {
                part["source"] =
                    json!({ "type": "base64", "media_type": media_type, "data": data });
            }
        }
    }
}

/// Fetches the http(s) image URLs in messages' `contents` (where `shape` puts them) that the pod
/// allows and puts each image inline, so the converters read it as if the app had sent it so.
/// With no URL allowed nothing is fetched, and the converters refuse the URLs, saying why.
pub(super) async fn inline_image_urls(
    mut contents: Vec<&mut Value>,
    shape: ImageUrls,
    fetcher: &ImageFetcher,
) -> Result<(), ApiError> {
    use futures_util::StreamExt;
    if !fetcher.enabled() {
        return Ok(());
    }
    let found: Vec<(usize, usize, String)> = contents
        .iter()
        .enumerate()
        .flat_map(|(i, content)| {
            content
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(move |(j, part)| shape.url(part).map(|url| (i, j, url.to_owned())))
        })
        .collect();
    if found.len() > MAX_IMAGES {
        return Err(ApiError::invalid(format!(
            "{} image URLs: Bedrock takes at most {MAX_IMAGES} images in a request",
            found.len()
        )));
    }
    let jobs: Vec<(String, String)> = found
        .iter()
        .map(|(i, j, url)| (url.clone(), shape.at(*i, *j)))
        .collect();
    let images: Vec<_> = futures_util::stream::iter(jobs)
        .map(|(url, at)| async move { fetcher.fetch(&url, &at).await })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    for ((i, j, _), image) in found.iter().zip(images) {
        let (media_type, bytes) = image?;
        if let Some(part) = contents[*i].get_mut(*j) {
            shape.inline(part, &media_type, &bytes);
        }
    }
    Ok(())
}

/// The media type and bytes of a `data:<type>;base64,<data>` URL.
fn data_url<'a>(url: &'a str, at: &str) -> Result<(&'a str, Vec<u8>), ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        let scheme = url.split(':').next().unwrap_or_default();
        return Err(ApiError::invalid(format!(
            "{at}: only data: URLs are accepted ({}: is not): a URL fetched from the pod could reach anything the pod can, so the sidecar fetches only under the prefixes the pod allows (annotation ai.kernelpanic09.io/image-url-allow, none here); send the bytes inline (data:image/png;base64,...)",
            super::truncated(scheme, 16)
        )));
    };
    let (header, data) = rest.split_once(',').ok_or_else(|| {
        ApiError::invalid(format!("{at}: a data: URL needs a comma before its data"))
    })?;
    let media_type = header.strip_suffix(";base64").ok_or_else(|| {
        ApiError::invalid(format!(
            "{at}: only base64 data: URLs are accepted (data:<type>;base64,<data>)"
        ))
    })?;
    Ok((media_type, base64(data, at)?))
}

/// Decoded base64, or a 400 naming where it was.
pub(super) fn base64(data: &str, at: &str) -> Result<Vec<u8>, ApiError> {
    aws_smithy_types::base64::decode(data.trim())
        .map_err(|_| ApiError::invalid(format!("{at}: the data is not valid base64")))
}

/// An image of `media_type` (`image/png`, ...).
pub(super) fn image(media_type: &str, bytes: Vec<u8>, at: &str) -> Result<Block, ApiError> {
    let format = ImageFormat::from_media_type(media_type).ok_or_else(|| {
        ApiError::invalid(format!(
            "{at}: images must be image/png, image/jpeg, image/gif or image/webp, not {}",
            super::truncated(media_type, 40)
        ))
    })?;
    Ok(Block::Image { format, bytes })
}

/// An image from a data URL (OpenAI's `image_url.url`).
pub(super) fn image_from_url(url: &str, at: &str) -> Result<Block, ApiError> {
    let (media_type, bytes) = data_url(url, at)?;
    image(media_type, bytes, at)
}

/// A document of `media_type`, named `name` as Bedrock requires it named.
pub(super) fn document(
    media_type: &str,
    name: Option<&str>,
    bytes: Vec<u8>,
    at: &str,
) -> Result<Block, ApiError> {
    let format = DocumentFormat::from_media_type(media_type).ok_or_else(|| {
        ApiError::invalid(format!(
            "{at}: documents must be application/pdf, text/plain, text/markdown, text/csv or text/html, not {}",
            super::truncated(media_type, 40)
        ))
    })?;
    Ok(Block::Document {
        format,
        name: document_name(name.unwrap_or("document")),
        bytes,
    })
}

/// A document from a data URL (OpenAI's `file.file_data`), named after its file name.
pub(super) fn document_from_url(
    url: &str,
    filename: Option<&str>,
    at: &str,
) -> Result<Block, ApiError> {
    let (media_type, bytes) = data_url(url, at)?;
    document(media_type, filename, bytes, at)
}

/// A name Bedrock takes for a document: letters, digits, single spaces, hyphens, parentheses and
/// square brackets (a file's extension and other characters become spaces), at most 200.
pub(super) fn document_name(name: &str) -> String {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    let mut out = String::with_capacity(stem.len());
    for c in stem.chars() {
        let c = if c.is_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']') {
            c
        } else {
            ' '
        };
        if !(c == ' ' && (out.is_empty() || out.ends_with(' '))) {
            out.push(c);
        }
    }
    let out: String = out.trim_end().chars().take(200).collect();
    if out.is_empty() {
        "document".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_are_read_and_other_urls_refused() {
        let block = image_from_url("data:image/png;base64,iVBORw0KGgo=", "p").unwrap();
        assert!(
            matches!(block, Block::Image { format: ImageFormat::Png, ref bytes } if bytes.starts_with(b"\x89PNG"))
        );
        let refused = image_from_url(
            "https://169.254.169.254/latest/meta-data",
            "messages[0].content[1].image_url.url",
        )
        .unwrap_err();
        assert!(
            refused.message.contains("only data: URLs")
                && refused.message.starts_with("messages[0]"),
            "{}",
            refused.message
        );
        assert!(
            image_from_url("data:image/tiff;base64,AAAA", "p")
                .unwrap_err()
                .message
                .contains("image/png")
        );
        assert!(
            image_from_url("data:image/png,rawdata", "p")
                .unwrap_err()
                .message
                .contains("base64")
        );
        assert!(
            image_from_url("data:image/png;base64,***", "p")
                .unwrap_err()
                .message
                .contains("not valid base64")
        );
    }

    #[test]
    fn document_names_are_made_acceptable_to_bedrock() {
        assert_eq!(document_name("Q3 report (final).pdf"), "Q3 report (final)");
        assert_eq!(document_name("a__b..c.txt"), "a b c");
        assert_eq!(document_name("...pdf"), "document");
    }
}
