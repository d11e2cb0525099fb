//! Deterministic token counting and model output.
//!
//! The rule: a text of `n` UTF-8 bytes is `ceil(n / 4)` tokens (roughly what English text gives
//! with real tokenizers). Input tokens are the sum over the system prompt and every message's
//! text blocks, plus the framing Bedrock bills around them ([`framing_tokens`]); output tokens
//! are those of the answer.

use super::config::OutputMode;

/// Input tokens billed once per request for the conversation's framing.
pub const FRAMING_PER_REQUEST: u64 = 8;
/// Input tokens billed per message and per system prompt for its role markers.
pub const FRAMING_PER_MESSAGE: u64 = 4;

/// The framing tokens of a request with `messages` messages and, if `system`, a system prompt.
/// Bedrock bills Claude's role markers as input: the original README's one-message prompt of 47
/// bytes (12 text tokens by the rule above) is billed 24 input tokens, which these figures give.
pub fn framing_tokens(messages: usize, system: bool) -> u64 {
    let blocks = u64::try_from(messages).unwrap_or(u64::MAX) + u64::from(system);
    FRAMING_PER_REQUEST.saturating_add(FRAMING_PER_MESSAGE.saturating_mul(blocks))
}

/// Tokens in `text` by the documented rule.
pub fn count_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    EndTurn,
    MaxTokens,
    StopSequence,
}

impl Stop {
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::EndTurn => "end_turn",
            Stop::MaxTokens => "max_tokens",
            Stop::StopSequence => "stop_sequence",
        }
    }
}

/// The answer to `last_user_text` under `mode`, cut at the first stop sequence or at
/// `max_tokens` tokens.
pub fn answer(
    mode: &OutputMode,
    last_user_text: &str,
    max_tokens: u32,
    stop_sequences: &[String],
) -> (String, Stop) {
    let full = match mode {
        OutputMode::Echo => last_user_text.to_owned(),
        OutputMode::Fixed { text } => text.clone(),
        OutputMode::Filler { tokens } => "tok ".repeat(*tokens as usize),
    };
    let mut text = full.as_str();
    let mut stop = Stop::EndTurn;
    if let Some(cut) = stop_sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
    {
        text = &text[..cut];
        stop = Stop::StopSequence;
    }
    let limit = usize::try_from(max_tokens)
        .unwrap_or(usize::MAX)
        .saturating_mul(4);
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text = &text[..end];
        stop = Stop::MaxTokens;
    }
    (text.to_owned(), stop)
}

/// Splits an answer into stream chunks of about one token each (4 bytes, on char boundaries).
pub fn chunks(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 4).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_the_rule() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
        assert_eq!(count_tokens("tok ".repeat(200).as_str()), 200);
    }

    #[test]
    fn answers_stop_where_they_should() {
        let (t, s) = answer(&OutputMode::Echo, "hello world", 100, &[]);
        assert_eq!((t.as_str(), s), ("hello world", Stop::EndTurn));
        let (t, s) = answer(&OutputMode::Echo, "hello world", 1, &[]);
        assert_eq!((t.as_str(), s), ("hell", Stop::MaxTokens));
        let (t, s) = answer(&OutputMode::Echo, "hello world", 100, &["wor".to_owned()]);
        assert_eq!((t.as_str(), s), ("hello ", Stop::StopSequence));
        let (t, _) = answer(&OutputMode::Filler { tokens: 3 }, "", 100, &[]);
        assert_eq!(count_tokens(&t), 3);
        let (t, _) = answer(&OutputMode::Echo, "ééé", 1, &[]);
        assert_eq!(t, "éé");
    }

    #[test]
    fn chunks_cover_the_text() {
        let text = "naïve café au lait";
        assert_eq!(chunks(text).concat(), text);
        assert!(chunks("").is_empty());
    }
}
