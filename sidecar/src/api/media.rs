//! Images and documents as the APIs carry them (data URLs, base64 sources), read into the
//! sidecar's blocks. Nothing is fetched from a URL: fetching from the pod would let anyone who
//! can write a prompt make the pod call any address it reaches (SSRF).

use crate::{
    bedrock::{Block, DocumentFormat, ImageFormat},
    errors::ApiError,
};

/// The media type and bytes of a `data:<type>;base64,<data>` URL.
fn data_url<'a>(url: &'a str, at: &str) -> Result<(&'a str, Vec<u8>), ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        let scheme = url.split(':').next().unwrap_or_default();
        return Err(ApiError::invalid(format!(
            "{at}: only data: URLs are accepted ({}: is not): the sidecar fetches nothing, since a URL fetched from the pod could reach anything the pod can; send the bytes inline (data:image/png;base64,...)",
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
