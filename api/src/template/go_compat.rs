//! Go text/template compatibility, by a scan of the source that skips what handlebars does not
//! read as tags: `{{.Name}}` becomes `{{ Name}}`, any other Go action is an error with a hint, and
//! nesting is bounded before handlebars' recursive parser sees the text.

use std::collections::HashSet;

use super::{MAX_NESTING, Position, TemplateError, is_variable_name};

/// What to write instead of each kind of Go action.
pub(super) mod hint {
    pub const IF: &str = "`{{#if Name}}…{{else}}…{{/if}}`";
    pub const RANGE: &str = "`{{#each Items}}…{{/each}}`";
    pub const WITH: &str = "`{{#with Name}}…{{/with}}`";
    pub const END: &str = "close blocks with `{{/if}}`, `{{/each}}` or `{{/with}}`";
    pub const TEMPLATE: &str =
        "named templates and partials are not supported: write the text inline";
    pub const COMMENT: &str = "`{{!-- comment --}}`";
    pub const TRIM: &str = "trim whitespace with `~`: `{{~Name~}}`";
    pub const PIPELINE: &str =
        "there are no pipelines: call a built-in helper, `{{helper Name}}`, e.g. `{{len Name}}`";
    pub const VARIABLE: &str = "there are no `$` variables: name loop items with `{{#each Items as |item|}}{{item}}{{/each}}`";
    pub const FIELD: &str = "write a variable as `{{Name}}` (or `{{.Name}}`), with no fields";
    pub const OTHER: &str = "`{{Name}}`, `{{#if Name}}…{{/if}}`, `{{#each Items}}…{{/each}}`";
}

/// Rewrites each Go `{{.Name}}` / `{{ .Name }}` to `{{ Name}}` / `{{  Name }}` (the dot becomes a
/// space, so positions in later errors stay true), rejects other Go actions, and bounds nesting
/// before handlebars' recursive parser sees the text. Raw blocks, comments and `\{{` are skipped,
/// as handlebars does not read them as tags; Markdown code fences are plain text to handlebars,
/// so a `{{.Diff}}` inside a diff fence is a placeholder like any other.
pub(super) fn go_compat(source: &str, declared: &HashSet<&str>) -> Result<String, TemplateError> {
    let bytes = source.as_bytes();
    let mut dots = Vec::new();
    let mut depth = 0;
    let mut from = 0;
    while let Some(start) = find(bytes, from, b"{{") {
        let rest = bytes.get(start..).unwrap_or_default();
        let next = if backslashes_before(bytes, start) == 1 {
            // `\{{` and `\{{{{` are literal text.
            Some(start + if rest.starts_with(b"{{{{") { 4 } else { 2 })
        } else if rest.starts_with(b"{{{{") {
            raw_block_end(bytes, start)
        } else if rest.starts_with(b"{{!--") {
            find(bytes, start + 5, b"--}}")
                .map(|end| end + 4)
                .or_else(|| find(bytes, start + 3, b"}}").map(|end| end + 2))
        } else if rest.starts_with(b"{{!") {
            find(bytes, start + 3, b"}}").map(|end| end + 2)
        } else if let Some(end) = tag_end(bytes, start + 2) {
            check_tag(source, start, end, declared, &mut dots, &mut depth)?;
            Some(end + 2)
        } else {
            None
        };
        // Something left open: handlebars reports it, with its position.
        let Some(next) = next else { break };
        from = next;
    }
    let mut rewritten = source.to_owned();
    for dot in dots {
        rewritten.replace_range(dot..=dot, " ");
    }
    Ok(rewritten)
}

/// The first `needle` at or after `from`.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|i| from + i)
}

/// How many `\` directly precede byte `at`: one escapes a `{{`, two or more do not.
fn backslashes_before(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(..at)
        .unwrap_or_default()
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count()
}

/// Where the raw block `{{{{name}}}}…{{{{/name}}}}` opening at `start` ends.
fn raw_block_end(bytes: &[u8], start: usize) -> Option<usize> {
    let open_end = find(bytes, start + 4, b"}}}}")? + 4;
    if bytes.get(start + 4) == Some(&b'/') {
        return Some(open_end);
    }
    let mut from = open_end;
    let close = loop {
        let candidate = find(bytes, from, b"{{{{")?;
        if backslashes_before(bytes, candidate) != 1 {
            break candidate;
        }
        from = candidate + 4;
    };
    Some(find(bytes, close + 4, b"}}}}")? + 4)
}

/// Where the tag whose content starts at `from` closes (the `}}`), skipping string literals.
fn tag_end(bytes: &[u8], from: usize) -> Option<usize> {
    Unquoted::new(bytes, from)
        .find(|&(i, b, _)| b == b'}' && bytes.get(i + 1) == Some(&b'}'))
        .map(|(i, _, _)| i)
}

/// Characters after which a new token (and so a string literal) may start inside a tag.
fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace() || b"([{,:=~#^&>*|/".contains(&b)
}

/// The bytes of a tag outside string literals, each with whether it starts a token.
struct Unquoted<'a> {
    bytes: &'a [u8],
    pos: usize,
    token_start: bool,
}

impl<'a> Unquoted<'a> {
    fn new(bytes: &'a [u8], from: usize) -> Self {
        Self {
            bytes,
            pos: from,
            token_start: true,
        }
    }
}

impl Iterator for Unquoted<'_> {
    type Item = (usize, u8, bool);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let at = self.pos;
            let b = *self.bytes.get(at)?;
            let token_start = self.token_start;
            self.pos += 1;
            if token_start && (b == b'"' || b == b'\'') {
                while let Some(&c) = self.bytes.get(self.pos) {
                    self.pos += if c == b'\\' { 2 } else { 1 };
                    if c == b {
                        break;
                    }
                }
                self.token_start = false;
                continue;
            }
            self.token_start = is_separator(b);
            return Some((at, b, token_start));
        }
    }
}

/// Checks one `{{…}}` tag (`start` is its `{{`, `end` its `}}`): a Go field is queued for
/// rewriting, another Go action is an error, and block and bracket nesting is counted.
fn check_tag(
    source: &str,
    start: usize,
    end: usize,
    declared: &HashSet<&str>,
    dots: &mut Vec<usize>,
    depth: &mut usize,
) -> Result<(), TemplateError> {
    let content = source.get(start + 2..end).unwrap_or_default();
    if let Some(name) = content.trim().strip_prefix('.')
        && is_variable_name(name)
    {
        dots.push(start + 2 + content.len() - content.trim_start().len());
        return Ok(());
    }
    if let Some(hint) = go_action(content, declared) {
        let tag = source.get(start..end + 2).unwrap_or_default();
        let mut action: String = tag.chars().take(60).collect();
        if action.len() < tag.len() {
            action.push('…');
        }
        return Err(TemplateError::GoAction {
            action,
            position: Position::of(source, start),
            hint,
        });
    }
    let too_deep = || TemplateError::NestingTooDeep {
        position: Position::of(source, start),
        limit: MAX_NESTING,
    };
    let opener = content.trim_start().trim_start_matches('~').trim_start();
    if opener.starts_with('#') {
        *depth += 1;
        if *depth > MAX_NESTING {
            return Err(too_deep());
        }
    } else if opener.starts_with('/') {
        *depth = depth.saturating_sub(1);
    }
    let mut brackets = 0usize;
    for (_, b, _) in Unquoted::new(content.as_bytes(), 0) {
        match b {
            b'(' | b'[' | b'{' => {
                brackets += 1;
                if brackets > MAX_NESTING {
                    return Err(too_deep());
                }
            }
            b')' | b']' | b'}' => brackets = brackets.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// If the tag content is Go text/template syntax, what to write instead.
fn go_action(content: &str, declared: &HashSet<&str>) -> Option<&'static str> {
    let bytes = content.as_bytes();
    // Go's trim markers need a space: `{{- ` and ` -}}`.
    let trim_left =
        bytes.first() == Some(&b'-') && bytes.get(1).is_some_and(u8::is_ascii_whitespace);
    let trim_right = bytes.last() == Some(&b'-')
        && bytes
            .len()
            .checked_sub(2)
            .and_then(|i| bytes.get(i))
            .is_some_and(u8::is_ascii_whitespace);
    let mut inner = content.trim();
    if trim_left {
        inner = inner.get(1..).unwrap_or_default().trim_start();
    }
    if trim_right {
        inner = inner
            .get(..inner.len().saturating_sub(1))
            .unwrap_or_default()
            .trim_end();
    }
    if inner.starts_with("/*") {
        return Some(hint::COMMENT);
    }

    let (mut field, mut pipeline, mut variable) = (false, false, false);
    let mut in_block_params = false;
    for (i, b, token_start) in Unquoted::new(bytes, 0) {
        let next = bytes.get(i + 1).copied();
        match b {
            b'.' if token_start && !matches!(next, Some(b'.' | b'/')) => field = true,
            b'$' if token_start => variable = true,
            b':' if next == Some(b'=') => variable = true,
            b'|' if in_block_params => in_block_params = false,
            b'|' => {
                let before = content.get(..i).unwrap_or_default().trim_end();
                if before.ends_with(" as") || before.ends_with("\tas") || before.ends_with("\nas") {
                    in_block_params = true;
                } else {
                    pipeline = true;
                }
            }
            _ => {}
        }
    }

    let word_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let word = inner.get(..word_end).unwrap_or_default();
    let has_args = word_end < inner.len();
    let go_keyword = match word {
        "end" => !has_args && !declared.contains(word),
        "range" | "define" | "template" | "block" => has_args && !declared.contains(word),
        // Handlebars' own helpers, but only as blocks: `{{#if …}}`, not `{{if …}}`.
        "if" | "with" | "each" | "unless" => has_args,
        _ => false,
    };
    if !(go_keyword || trim_left || trim_right || field || pipeline || variable) {
        return None;
    }
    Some(match word {
        "if" | "else" | "unless" => hint::IF,
        "range" | "each" => hint::RANGE,
        "with" => hint::WITH,
        "end" => hint::END,
        "define" | "template" | "block" => hint::TEMPLATE,
        _ if trim_left || trim_right => hint::TRIM,
        _ if pipeline || matches!(word, "printf" | "print" | "println" | "index" | "slice") => {
            hint::PIPELINE
        }
        _ if variable => hint::VARIABLE,
        _ if field => hint::FIELD,
        _ => hint::OTHER,
    })
}
