//! ConverseStream's answer: `application/vnd.amazon.eventstream` frames (read and CRC-checked by
//! `aws-smithy-eventstream`), each an event whose JSON payload `wire.rs` reads, or an exception
//! that ends the stream.

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Buf, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use k8s_ai_api::pricing::{GuardrailUnits, TokenUsage};
use serde::de::DeserializeOwned;

use super::wire::{
    ContentBlockDeltaEvent, ContentBlockStartEvent, MessageStopEvent, MetadataEvent,
};
use crate::errors::ApiError;

/// The largest frame read: the event-stream format's own limit (16 MiB), far above any event.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// A frame's prelude: total length, headers length, prelude CRC.
const PRELUDE_BYTES: usize = 12;

/// What one ConverseStream event says, as the sidecar uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPart {
    /// More of the answer's text.
    Text(String),
    /// The model starts a tool call in content block `block`.
    ToolStart {
        block: u32,
        id: String,
        name: String,
    },
    /// More of the arguments (JSON text) of the tool call in content block `block`.
    ToolInput { block: u32, json: String },
    /// More of the model's reasoning.
    Reasoning(String),
    /// The signature of the reasoning so far.
    ReasoningSignature(String),
    /// The model stopped, for this reason (`end_turn`, `max_tokens`, `guardrail_intervened`, …).
    Stop(String),
    /// Bedrock's count of what the call used: tokens, and the guardrail's text units.
    Usage(TokenUsage, GuardrailUnits),
    /// An event the sidecar has no use for (`messageStart`, `contentBlockStop`, …).
    Other,
}

/// The events of one ConverseStream answer, read as they arrive.
pub struct ConverseEvents {
    body: Incoming,
    buf: BytesMut,
}

impl ConverseEvents {
    pub(super) fn new(body: Incoming) -> Self {
        ConverseEvents {
            body,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// The next event; `None` once the stream ended cleanly. An in-stream exception, a broken
    /// frame or a connection cut mid-frame is an error, and the stream's end.
    pub async fn next(&mut self) -> Result<Option<StreamPart>, ApiError> {
        loop {
            if let Some(message) = self.complete_frame()? {
                return part(&message).map(Some);
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(broken(format!(
                        "the stream ended inside a frame ({} bytes of it received)",
                        self.buf.len()
                    )));
                }
                Some(Err(e)) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        format!(
                            "Bedrock's stream broke: {}",
                            crate::credentials::error_chain(&e)
                        ),
                    ));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The first frame in the buffer, once all of it has arrived.
    fn complete_frame(&mut self) -> Result<Option<Message>, ApiError> {
        if self.buf.len() < PRELUDE_BYTES {
            return Ok(None);
        }
        let total = usize::try_from((&self.buf[..4]).get_u32()).unwrap_or(usize::MAX);
        if !(PRELUDE_BYTES + 4..=MAX_FRAME_BYTES).contains(&total) {
            return Err(broken(format!("a frame of {total} bytes")));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        read_message_from(&mut frame)
            .map(Some)
            .map_err(|e| broken(e.to_string()))
    }
}

fn broken(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("Bedrock's stream could not be read: {reason}"),
    )
}

fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

fn payload<T: DeserializeOwned>(message: &Message, event: &str) -> Result<T, ApiError> {
    serde_json::from_slice(message.payload()).map_err(|e| broken(format!("its {event} event: {e}")))
}

/// One frame, as the sidecar uses it: an event, or the exception or error that ends the stream
/// (Bedrock's code and message, mapped as a refused call's are).
fn part(message: &Message) -> Result<StreamPart, ApiError> {
    match header(message, ":message-type") {
        Some("event") => {}
        Some("exception") => {
            let code = header(message, ":exception-type").unwrap_or("UnknownError");
            let body: super::wire::ErrorBody =
                serde_json::from_slice(message.payload()).unwrap_or_default();
            return Err(super::service_error(&exception_code(code), &body.message()));
        }
        Some("error") => {
            let code = header(message, ":error-code").unwrap_or("UnknownError");
            let text = header(message, ":error-message").unwrap_or_default();
            return Err(super::service_error(code, text));
        }
        other => {
            return Err(broken(format!("a frame of message type {other:?}")));
        }
    }
    Ok(match header(message, ":event-type").unwrap_or_default() {
        "contentBlockStart" => {
            let event: ContentBlockStartEvent = payload(message, "contentBlockStart")?;
            event
                .start
                .tool_use
                .map_or(StreamPart::Other, |t| StreamPart::ToolStart {
                    block: event.content_block_index,
                    id: t.tool_use_id,
                    name: t.name,
                })
        }
        "contentBlockDelta" => {
            let event: ContentBlockDeltaEvent = payload(message, "contentBlockDelta")?;
            match (
                event.delta.text,
                event.delta.tool_use,
                event.delta.reasoning_content,
            ) {
                (Some(text), _, _) => StreamPart::Text(text),
                (None, Some(tool), _) => StreamPart::ToolInput {
                    block: event.content_block_index,
                    json: tool.input,
                },
                (None, None, Some(r)) => match (r.text, r.signature) {
                    (Some(text), _) => StreamPart::Reasoning(text),
                    (None, Some(signature)) => StreamPart::ReasoningSignature(signature),
                    (None, None) => StreamPart::Other,
                },
                (None, None, None) => StreamPart::Other,
            }
        }
        "messageStop" => {
            let event: MessageStopEvent = payload(message, "messageStop")?;
            StreamPart::Stop(event.stop_reason)
        }
        "metadata" => {
            let event: MetadataEvent = payload(message, "metadata")?;
            let (tokens, units) = event.usage();
            StreamPart::Usage(tokens, units)
        }
        _ => StreamPart::Other,
    })
}

/// An exception's code as the error codes of refused calls spell it: the stream's member name
/// (`throttlingException`) with a capital (`ThrottlingException`).
fn exception_code(member: &str) -> String {
    let mut chars = member.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_ascii_uppercase().to_string() + chars.as_str()
    })
}

#[cfg(test)]
mod tests {
    use aws_smithy_types::event_stream::Header;
    use bytes::Bytes;

    use super::*;

    fn frame(headers: &[(&'static str, &'static str)], payload: &str) -> Message {
        let mut message = Message::new(Bytes::from(payload.to_owned()));
        for (name, value) in headers {
            message = message.add_header(Header::new(*name, HeaderValue::String((*value).into())));
        }
        message
    }

    #[test]
    fn events_become_parts() {
        let event = |kind, payload| {
            frame(
                &[(":message-type", "event"), (":event-type", kind)],
                payload,
            )
        };
        assert_eq!(
            part(&event(
                "contentBlockDelta",
                r#"{"contentBlockIndex":0,"delta":{"text":"hi"},"p":"abc"}"#
            ))
            .unwrap(),
            StreamPart::Text("hi".into())
        );
        assert_eq!(
            part(&event("messageStop", r#"{"stopReason":"max_tokens"}"#)).unwrap(),
            StreamPart::Stop("max_tokens".into())
        );
        let StreamPart::Usage(tokens, _) = part(&event(
            "metadata",
            r#"{"usage":{"inputTokens":3,"outputTokens":5,"cacheReadInputTokens":7},"metrics":{"latencyMs":1}}"#,
        ))
        .unwrap() else {
            panic!("a metadata event is usage");
        };
        assert_eq!(
            (
                tokens.input_tokens,
                tokens.output_tokens,
                tokens.cache_read_input_tokens
            ),
            (3, 5, 7)
        );
        assert_eq!(
            part(&event("messageStart", r#"{"role":"assistant"}"#)).unwrap(),
            StreamPart::Other
        );
        assert_eq!(
            part(&event("metadata", "not json")).unwrap_err().code,
            "upstream_error"
        );
    }

    #[test]
    fn exceptions_end_the_stream_as_refused_calls_do() {
        let exception = |kind| {
            frame(
                &[(":message-type", "exception"), (":exception-type", kind)],
                r#"{"message":"slow down"}"#,
            )
        };
        let throttled = part(&exception("throttlingException")).unwrap_err();
        assert_eq!(throttled.code, "upstream_throttled");
        assert!(
            throttled.message.contains("ThrottlingException: slow down"),
            "{}",
            throttled.message
        );
        assert_eq!(
            part(&exception("modelStreamErrorException"))
                .unwrap_err()
                .code,
            "upstream_error"
        );
        let error = frame(
            &[
                (":message-type", "error"),
                (":error-code", "InternalFailure"),
                (":error-message", "boom"),
            ],
            "",
        );
        assert!(
            part(&error)
                .unwrap_err()
                .message
                .contains("InternalFailure: boom")
        );
    }
}
