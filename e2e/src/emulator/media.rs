//! Images and documents in Converse, checked as Bedrock checks them (formats, sizes, counts,
//! names, the bytes matching the format) and counted as the models bill them.

use serde_json::Value;

use super::{error::AwsError, text::count_tokens};

const MAX_IMAGE_BYTES: usize = 3_750_000;
const MAX_IMAGES: usize = 20;
const MAX_DOCUMENT_BYTES: usize = 4_500_000;
const MAX_DOCUMENTS: usize = 5;
/// Claude's cost of an image: width × height / 750 tokens, the image scaled to at most 1,600.
const IMAGE_TOKEN_CAP: u64 = 1600;
/// What a PDF page costs here (Claude bills 1,500–3,000 a page of text and image).
const PDF_PAGE_TOKENS: u64 = 1500;

fn bytes_of(block: &Value, at: &str) -> Result<Vec<u8>, AwsError> {
    let data = block["source"]["bytes"].as_str().ok_or_else(|| {
        AwsError::validation(format!(
            "1 validation error detected: Value at '{at}.source' failed to satisfy constraint: Member must not be null"
        ))
    })?;
    aws_smithy_types::base64::decode(data)
        .map_err(|_| AwsError::validation(format!("{at}.source.bytes is not valid base64.")))
}

/// The tokens an image block costs, once its format, size and bytes are checked.
pub fn image_tokens(image: &Value, at: &str) -> Result<u64, AwsError> {
    let format = image["format"].as_str().unwrap_or_default();
    let magic: &[&[u8]] = match format {
        "png" => &[b"\x89PNG\r\n\x1a\n"],
        "jpeg" => &[b"\xff\xd8\xff"],
        "gif" => &[b"GIF87a", b"GIF89a"],
        "webp" => &[b"RIFF"],
        _ => {
            return Err(AwsError::validation(format!(
                "1 validation error detected: Value '{format}' at '{at}.format' failed to satisfy constraint: Member must satisfy enum value set: [gif, jpeg, png, webp]"
            )));
        }
    };
    let bytes = bytes_of(image, at)?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(AwsError::validation(format!(
            "{at}: image exceeds max size of {MAX_IMAGE_BYTES} bytes"
        )));
    }
    if !magic.iter().any(|m| bytes.starts_with(m))
        || (format == "webp" && bytes.get(8..12) != Some(b"WEBP"))
    {
        return Err(AwsError::validation(format!(
            "Unable to process the image at {at}: its bytes are not a {format} image."
        )));
    }
    // A PNG's size is in its header; other formats are billed at the cap.
    let tokens = if format == "png" && bytes.len() >= 24 {
        let dim = |i: usize| {
            u64::from(u32::from_be_bytes([
                bytes[i],
                bytes[i + 1],
                bytes[i + 2],
                bytes[i + 3],
            ]))
        };
        (dim(16) * dim(20)).div_ceil(750).clamp(1, IMAGE_TOKEN_CAP)
    } else {
        IMAGE_TOKEN_CAP
    };
    Ok(tokens)
}

/// Whether Bedrock's name for a document is one it takes: letters, digits, single whitespace,
/// hyphens, parentheses and square brackets.
fn is_document_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains("  ")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '(' | ')' | '[' | ']'))
}

/// The tokens a document block costs, once its format, name and size are checked.
pub fn document_tokens(document: &Value, at: &str) -> Result<u64, AwsError> {
    let format = document["format"].as_str().unwrap_or_default();
    if !matches!(
        format,
        "pdf" | "csv" | "doc" | "docx" | "xls" | "xlsx" | "html" | "txt" | "md"
    ) {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{format}' at '{at}.format' failed to satisfy constraint: Member must satisfy enum value set: [pdf, csv, doc, docx, xls, xlsx, html, txt, md]"
        )));
    }
    let name = document["name"].as_str().unwrap_or_default();
    if !is_document_name(name) {
        return Err(AwsError::validation(format!(
            "The document file name at {at}.name can only contain alphanumeric characters, whitespace characters, hyphens, parentheses, and square brackets. The name can't contain more than one consecutive whitespace character."
        )));
    }
    let bytes = bytes_of(document, at)?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(AwsError::validation(format!(
            "{at}: document exceeds max size of {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    Ok(match format {
        "pdf" => {
            if !bytes.starts_with(b"%PDF-") {
                return Err(AwsError::validation(format!(
                    "Unable to process the document at {at}: it is not a PDF."
                )));
            }
            let pages = bytes
                .windows(5)
                .enumerate()
                .filter(|(i, w)| {
                    *w == b"/Type" && {
                        let word: Vec<u8> = bytes[i + 5..]
                            .iter()
                            .skip_while(|b| b.is_ascii_whitespace())
                            .take(6)
                            .copied()
                            .collect();
                        word.starts_with(b"/Page") && word.get(5) != Some(&b's')
                    }
                })
                .count();
            PDF_PAGE_TOKENS * u64::try_from(pages.max(1)).unwrap_or(1)
        }
        _ => count_tokens(&String::from_utf8_lossy(&bytes)),
    } + count_tokens(name))
}

pub fn check_counts(images: usize, documents: usize) -> Result<(), AwsError> {
    if images > MAX_IMAGES {
        return Err(AwsError::validation(format!(
            "Too many images: {images}. A request can include at most {MAX_IMAGES} images."
        )));
    }
    if documents > MAX_DOCUMENTS {
        return Err(AwsError::validation(format!(
            "Too many documents: {documents}. A request can include at most {MAX_DOCUMENTS} documents."
        )));
    }
    Ok(())
}

/// Whether the model reads images (text-only families do not).
pub fn reads_images(base_model: &str) -> bool {
    const TEXT_ONLY: &[&str] = &[
        "amazon.titan-text",
        "amazon.nova-micro",
        "meta.llama3-1-",
        "meta.llama3-8b",
        "meta.llama3-70b",
        "meta.llama3-2-1b",
        "meta.llama3-2-3b",
        "meta.llama3-3-",
        "mistral.mistral-",
        "mistral.mixtral-",
        "cohere.command",
        "ai21.",
        "deepseek.",
    ];
    !TEXT_ONLY.iter().any(|p| base_model.starts_with(p))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn png(width: u32, height: u32) -> String {
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        bytes.extend(width.to_be_bytes());
        bytes.extend(height.to_be_bytes());
        aws_smithy_types::base64::encode(bytes)
    }

    #[test]
    fn images_are_checked_and_billed_by_their_size() {
        let image =
            |format: &str, data: String| json!({ "format": format, "source": { "bytes": data } });
        assert_eq!(
            image_tokens(&image("png", png(300, 250)), "m").unwrap(),
            100
        );
        assert_eq!(
            image_tokens(&image("png", png(4000, 4000)), "m").unwrap(),
            IMAGE_TOKEN_CAP
        );
        assert!(
            image_tokens(&image("jpeg", png(10, 10)), "m")
                .unwrap_err()
                .message
                .contains("not a jpeg image")
        );
        assert!(
            image_tokens(&image("tiff", png(10, 10)), "m")
                .unwrap_err()
                .message
                .contains("enum value set")
        );
        assert!(!reads_images("meta.llama3-1-8b-instruct-v1:0"));
        assert!(reads_images("anthropic.claude-haiku-4-5-20251001-v1:0"));
    }

    #[test]
    fn documents_are_checked_and_billed_by_pages_or_text() {
        let doc = |format: &str, name: &str, bytes: &[u8]| json!({ "format": format, "name": name, "source": { "bytes": aws_smithy_types::base64::encode(bytes) } });
        let pdf = b"%PDF-1.7 <</Type /Pages>> <</Type /Page>> <</Type/Page>>";
        assert_eq!(
            document_tokens(&doc("pdf", "report", pdf), "m").unwrap(),
            2 * PDF_PAGE_TOKENS + 2
        );
        assert_eq!(
            document_tokens(&doc("txt", "notes", b"12345678"), "m").unwrap(),
            2 + 2
        );
        assert!(
            document_tokens(&doc("pdf", "a.pdf", pdf), "m")
                .unwrap_err()
                .message
                .contains("can only contain")
        );
        assert!(
            document_tokens(&doc("pdf", "a", b"hello"), "m")
                .unwrap_err()
                .message
                .contains("not a PDF")
        );
    }
}
