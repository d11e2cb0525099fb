//! The built-in detectors: for each entity type a `regex` (linear time, compiled once for the
//! process) finds candidates, then checks of the match and of the bytes around it keep the real
//! ones.

use std::net::Ipv6Addr;
use std::sync::LazyLock;

use k8s_ai_api::guardrail_policy::PiiEntityType;
use regex::Regex;

/// The built-in detectors' patterns, compiled once for the process.
#[derive(Debug)]
pub(super) struct Patterns {
    aws_access_key: Regex,
    aws_secret_key: Regex,
    card: Regex,
    email: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone_nanp: Regex,
    phone_bare: Regex,
    phone_intl: Regex,
    ssn: Regex,
    url: Regex,
}

pub(super) static PATTERNS: LazyLock<Result<Patterns, regex::Error>> =
    LazyLock::new(Patterns::compile);

impl Patterns {
    fn compile() -> Result<Self, regex::Error> {
        // ASCII classes only (`[0-9]`, not `\d`, which is Unicode): the checks below work on bytes.
        Ok(Self {
            aws_access_key: Regex::new(
                "(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ASCA)[A-Z0-9]{16}",
            )?,
            // Maximal runs of the secret alphabet; the length (exactly 40) is checked after.
            aws_secret_key: Regex::new("[A-Za-z0-9/+]{40,}")?,
            // Maximal runs of digit groups separated by one space or dash; cards are windows of it.
            card: Regex::new("[0-9]+(?:[ -][0-9]+)*")?,
            email: Regex::new(
                r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}",
            )?,
            ipv4: Regex::new(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")?,
            // Candidates with at least two colons; `Ipv6Addr` decides.
            ipv6: Regex::new(r"[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")?,
            phone_nanp: Regex::new(
                r"(?:\+?1[ .\-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}",
            )?,
            phone_bare: Regex::new("[2-9][0-9]{2}[2-9][0-9]{6}")?,
            phone_intl: Regex::new(r"\+[1-9][0-9 ().\-]{6,22}[0-9]")?,
            ssn: Regex::new("[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}|[0-9]{9}")?,
            url: Regex::new(r#"(?i:https?|ftp)://[^\s<>"'`]+"#)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Builtin {
    AwsAccessKey,
    AwsSecretKey,
    Card,
    Email,
    Ip,
    Phone,
    Ssn,
    Url,
}

impl Builtin {
    pub(super) fn of(t: PiiEntityType) -> Option<Self> {
        Some(match t {
            PiiEntityType::AwsAccessKey => Self::AwsAccessKey,
            PiiEntityType::AwsSecretKey => Self::AwsSecretKey,
            PiiEntityType::CreditDebitCardNumber => Self::Card,
            PiiEntityType::Email => Self::Email,
            PiiEntityType::IpAddress => Self::Ip,
            PiiEntityType::Phone => Self::Phone,
            PiiEntityType::UsSocialSecurityNumber => Self::Ssn,
            PiiEntityType::Url => Self::Url,
            _ => return None,
        })
    }

    /// The type's serde (and Bedrock) name.
    pub(super) fn entity(self) -> &'static str {
        match self {
            Self::AwsAccessKey => "AWS_ACCESS_KEY",
            Self::AwsSecretKey => "AWS_SECRET_KEY",
            Self::Card => "CREDIT_DEBIT_CARD_NUMBER",
            Self::Email => "EMAIL",
            Self::Ip => "IP_ADDRESS",
            Self::Phone => "PHONE",
            Self::Ssn => "US_SOCIAL_SECURITY_NUMBER",
            Self::Url => "URL",
        }
    }

    pub(super) fn find(self, p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
        match self {
            Self::AwsAccessKey => find_aws_access_key(p, text, out),
            Self::AwsSecretKey => find_aws_secret_key(p, text, out),
            Self::Card => find_cards(p, text, out),
            Self::Email => find_emails(p, text, out),
            Self::Ip => {
                find_ipv4(p, text, out);
                find_ipv6(p, text, out);
            }
            Self::Phone => find_phones(p, text, out),
            Self::Ssn => find_ssn(p, text, out),
            Self::Url => find_urls(p, text, out),
        }
    }
}

// Helpers on bytes. Offsets come from regex matches on `&str`, so they are char boundaries; the
// neighbours looked at are ASCII or a UTF-8 byte that is neither alphanumeric nor punctuation.

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn byte_before(b: &[u8], pos: usize) -> Option<u8> {
    pos.checked_sub(1).and_then(|i| b.get(i).copied())
}

fn is_digit_at(b: &[u8], pos: Option<usize>) -> bool {
    pos.and_then(|i| b.get(i)).is_some_and(u8::is_ascii_digit)
}

/// A match starting at `pos` continues a word or a longer number (`x1`, `12.`, `7-`) before it.
fn glued_before(b: &[u8], pos: usize) -> bool {
    match byte_before(b, pos) {
        Some(c) if is_word(c) => true,
        Some(b'.' | b'-') => is_digit_at(b, pos.checked_sub(2)),
        _ => false,
    }
}

/// A match ending at `pos` continues into a word or a longer number after it.
fn glued_after(b: &[u8], pos: usize) -> bool {
    match b.get(pos).copied() {
        Some(c) if is_word(c) => true,
        Some(b'.' | b'-') => is_digit_at(b, pos.checked_add(1)),
        _ => false,
    }
}

/// Like [`glued_before`], and an identifier prefix (`ORD-`, `id.`) counts too.
fn glued_before_id(b: &[u8], pos: usize) -> bool {
    glued_before(b, pos)
        || (matches!(byte_before(b, pos), Some(b'.' | b'-'))
            && pos
                .checked_sub(2)
                .and_then(|i| b.get(i))
                .is_some_and(|&c| is_word(c)))
}

/// Like [`glued_after`], and an identifier suffix (`-A`) counts too.
fn glued_after_id(b: &[u8], pos: usize) -> bool {
    glued_after(b, pos)
        || (b.get(pos) == Some(&b'-')
            && pos
                .checked_add(1)
                .and_then(|i| b.get(i))
                .is_some_and(|&c| is_word(c)))
}

/// Whether one of `keywords` (lowercase ASCII) starts a word within `window` bytes before `pos`:
/// the context some weak formats need (a bare 9-digit SSN, a bare 10-digit phone number).
fn context_has(b: &[u8], pos: usize, window: usize, keywords: &[&str]) -> bool {
    let from = pos.saturating_sub(window);
    let Some(hay) = b.get(from..pos) else {
        return false;
    };
    keywords.iter().any(|kw| {
        let kw = kw.as_bytes();
        !kw.is_empty()
            && hay.windows(kw.len()).enumerate().any(|(i, w)| {
                w.eq_ignore_ascii_case(kw)
                    && !byte_before(b, from + i).is_some_and(|c| c.is_ascii_alphabetic())
            })
    })
}

/// The number spelt by ASCII digits (at most 9 of them by construction of the callers).
fn number(digits: &[u8]) -> u32 {
    digits.iter().fold(0u32, |acc, &d| {
        acc.saturating_mul(10)
            .saturating_add(u32::from(d.wrapping_sub(b'0')))
    })
}

fn digits_of(s: &[u8]) -> Vec<u8> {
    s.iter().copied().filter(u8::is_ascii_digit).collect()
}

// AWS_ACCESS_KEY: a known key-id prefix and 16 upper-case alphanumerics, as a whole word.
fn find_aws_access_key(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.aws_access_key.find_iter(text) {
        let before = byte_before(b, m.start()).is_some_and(is_word);
        let after = b.get(m.end()).copied().is_some_and(is_word);
        if !before && !after {
            out(m.start(), m.end());
        }
    }
}

const SECRET_CONTEXT: &[&str] = &["secret", "aws"];

// AWS_SECRET_KEY: exactly 40 characters of `[A-Za-z0-9/+]` (not part of a longer token or of
// padded base64), with upper, lower and digit, and at least 22 distinct characters (a random
// 40-char key has about 30; paths and identifiers far fewer). Then either a `/` or `+` (about
// 72% of real keys), or the word `secret`/`aws` within 80 bytes before.
fn find_aws_secret_key(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.aws_secret_key.find_iter(text) {
        let s = m.as_str().as_bytes();
        if s.len() != 40 {
            continue;
        }
        if matches!(byte_before(b, m.start()), Some(b'_' | b'-' | b'.'))
            || matches!(b.get(m.end()), Some(b'=' | b'_' | b'-'))
            || (b.get(m.end()) == Some(&b'.')
                && m.end()
                    .checked_add(1)
                    .and_then(|i| b.get(i))
                    .is_some_and(|&c| is_word(c)))
        {
            continue;
        }
        let upper = s.iter().any(u8::is_ascii_uppercase);
        let lower = s.iter().any(u8::is_ascii_lowercase);
        let digit = s.iter().any(u8::is_ascii_digit);
        let symbol = s.iter().any(|&c| c == b'/' || c == b'+');
        let mut seen = [false; 128];
        for &c in s {
            if let Some(slot) = seen.get_mut(usize::from(c)) {
                *slot = true;
            }
        }
        let distinct = seen.iter().filter(|&&x| x).count();
        if !(upper && lower && digit) || distinct < 22 {
            continue;
        }
        if symbol || context_has(b, m.start(), 80, SECRET_CONTEXT) {
            out(m.start(), m.end());
        }
    }
}

const CARD_CONTEXT: &[&str] = &[
    "card",
    "pan",
    "cc",
    "credit",
    "debit",
    "visa",
    "mastercard",
    "maestro",
    "amex",
    "discover",
    "jcb",
    "diners",
    "unionpay",
    "union pay",
    "payment",
];

// CREDIT_DEBIT_CARD_NUMBER: 13-19 digits, contiguous or in groups separated by one space or one
// dash (the same throughout, first group of 4, others of 3-6, the last of 1-6), with a known
// issuer prefix and length, and a valid Luhn check digit. Contiguous runs of 17-19 digits (mostly
// 64-bit ids and constants) also need a word such as "card" or "visa" within 32 bytes before.
fn find_cards(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for m in p.card.find_iter(text) {
        if m.len() < 13 {
            continue;
        }
        groups.clear();
        let mut start = None;
        for (i, c) in m.as_str().bytes().enumerate() {
            match (c.is_ascii_digit(), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    groups.push((m.start() + s, m.start() + i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            groups.push((m.start() + s, m.end()));
        }
        find_card_windows(b, &groups, out);
    }
}

/// Tries each run of consecutive groups (at most 19 digits, so at most 19 groups) as a card,
/// keeping the longest valid one at each start: linear in the number of groups.
fn find_card_windows(b: &[u8], groups: &[(usize, usize)], out: &mut dyn FnMut(usize, usize)) {
    let last = groups.len().saturating_sub(1);
    let mut i = 0;
    let mut digits: Vec<u8> = Vec::with_capacity(19);
    while let Some(&(ws, first_end)) = groups.get(i) {
        let mut found = None;
        digits.clear();
        let sep = b.get(first_end).copied();
        // A window inside a dashed number (`12-4111-...`) is not a card.
        let starts_ok = if i == 0 {
            !glued_before(b, ws)
        } else {
            byte_before(b, ws) == Some(b' ')
        };
        if starts_ok {
            for j in i..groups.len() {
                let Some(&(gs, ge)) = groups.get(j) else {
                    break;
                };
                if let Some(g) = b.get(gs..ge) {
                    digits.extend_from_slice(g);
                }
                if digits.len() > 19 {
                    break;
                }
                let glen = ge - gs;
                if j > i {
                    if b.get(gs - 1).copied() != sep {
                        break;
                    }
                    let first_len = first_end - ws;
                    if first_len != 4 || glen > 6 {
                        break;
                    }
                }
                let shape_ok = if j == i {
                    glen >= 13 && (glen <= 16 || context_has(b, ws, 32, CARD_CONTEXT))
                } else {
                    // Middle groups of 3-6 were checked when they were the last of a shorter try.
                    glen >= 1
                };
                let ends_ok = if j == last {
                    !glued_after(b, ge)
                } else {
                    b.get(ge) == Some(&b' ')
                };
                if shape_ok
                    && ends_ok
                    && digits.len() >= 13
                    && card_prefix_ok(&digits)
                    && luhn_ok(&digits)
                {
                    found = Some((j, ge));
                }
                if j > i && glen < 3 {
                    // A short group may only be the last one.
                    break;
                }
            }
        }
        if let Some((j, we)) = found {
            out(ws, we);
            i = j + 1;
        } else {
            i += 1;
        }
    }
}

/// Issuer prefixes and lengths (Visa, Mastercard, Amex, Diners, JCB, Discover, Union Pay,
/// Ru Pay, Maestro): cuts false positives from ids, epoch timestamps and 64-bit constants.
fn card_prefix_ok(d: &[u8]) -> bool {
    let n = d.len();
    let prefix = |k: usize| number(d.get(..k).unwrap_or_default());
    let (p2, p3, p4) = (prefix(2), prefix(3), prefix(4));
    let long = (16..=19).contains(&n);
    let maestro = matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761..=6763);
    match d.first() {
        Some(b'4') => matches!(n, 13 | 16 | 19),
        Some(b'2') => (2221..=2720).contains(&p4) && n == 16,
        Some(b'3') => {
            (matches!(p2, 34 | 37) && n == 15)
                || ((3528..=3589).contains(&p4) && long)
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39))
                    && matches!(n, 14 | 16))
        }
        Some(b'5') => ((51..=55).contains(&p2) && n == 16) || (maestro && n >= 13),
        Some(b'6') => {
            ((p4 == 6011 || (644..=649).contains(&p3) || matches!(p2, 62 | 65)) && long)
                || (p2 == 60 && n == 16)
                || (maestro && n >= 13)
        }
        _ => false,
    }
}

/// The Luhn (mod 10) check digit of card numbers.
fn luhn_ok(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &c)| {
            let v = u32::from(c.wrapping_sub(b'0'));
            if i % 2 == 1 {
                if v * 2 > 9 { v * 2 - 9 } else { v * 2 }
            } else {
                v
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

// EMAIL: local@domain.tld with a letters-only TLD (so `lodash@4.17.21` is not one), not followed
// by a word character, and not a `@2x` image asset name (`logo@2x.png`).
fn find_emails(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.email.find_iter(text) {
        let s = m.as_str();
        if b.get(m.end()).copied().is_some_and(is_word) {
            continue;
        }
        let (local, domain) = s.split_once('@').unwrap_or_default();
        let first_label = domain.split('.').next().unwrap_or_default();
        if let Some(scale) = first_label
            .strip_suffix('x')
            .or_else(|| first_label.strip_suffix('X'))
            && !scale.is_empty()
            && scale.bytes().all(|c| c.is_ascii_digit())
        {
            continue;
        }
        // A local part cannot start with a dot: `...bob@x.com` is `bob@x.com`.
        let dots = local.len() - local.trim_start_matches('.').len();
        if dots < local.len() {
            out(m.start() + dots, m.end());
        }
    }
}

const NOT_IP_CONTEXT: &[&str] = &[
    "version", "release", "oid", "section", "chapter", "rfc", "§",
];

// IP_ADDRESS (v4): four dotted octets of at most 255, not part of a longer dotted or alphanumeric
// token (`1.2.3.4.5`, OIDs, `v1.2.3.4`, `section-4.1.2.6`) and not preceded by "version",
// "release", "OID", "section", "chapter", "RFC" or `§` within 24 bytes. Any other dotted quad is
// an address: `1.2.3.4`, `127.0.0.1`, `user@10.0.0.1`, and also `update V8 to 9.4.146.19`.
fn find_ipv4(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.ipv4.find_iter(text) {
        if glued_before_id(b, m.start())
            || byte_before(b, m.start()) == Some(b'.')
            || glued_after(b, m.end())
        {
            continue;
        }
        if !m.as_str().split('.').all(|o| number(o.as_bytes()) <= 255) {
            continue;
        }
        if context_has(b, m.start(), 24, NOT_IP_CONTEXT) {
            continue;
        }
        out(m.start(), m.end());
    }
}

// IP_ADDRESS (v6): what `Ipv6Addr` parses (including `::ffff:1.2.3.4`), as a whole token, with
// at least one decimal digit (so `Add::add`, `dead::beef` are code), two non-empty groups (so
// Rust paths `e2e::`, `f64::` are code) and either three groups or a group of three or more
// characters (so Python slices `1::2` are not addresses). `::1`, `fe80::` and `::` are therefore
// not detected.
fn find_ipv6(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.ipv6.find_iter(text) {
        // A single `:` or a `.` at either end is punctuation (`addr:fe80::1`, `on fe80::1: no
        // route`, end of sentence); `::` belongs to the address.
        let mut s = m.as_str().trim_end_matches('.');
        let mut start = m.start();
        if let Some(rest) = s.strip_prefix(':')
            && !rest.starts_with(':')
        {
            s = rest;
            start += 1;
        }
        if let Some(rest) = s.strip_suffix(':')
            && !rest.ends_with(':')
        {
            s = rest;
        }
        let end = start + s.len();
        if s.len() > 45 || s.len() < 3 {
            continue;
        }
        if byte_before(b, start).is_some_and(is_word) || b.get(end).copied().is_some_and(is_word) {
            continue;
        }
        if s.parse::<Ipv6Addr>().is_err() || !s.bytes().any(|c| c.is_ascii_digit()) {
            continue;
        }
        let groups: Vec<&str> = s.split(':').filter(|g| !g.is_empty()).collect();
        if groups.len() >= 3 || (groups.len() == 2 && groups.iter().any(|g| g.len() >= 3)) {
            out(start, end);
        }
    }
}

const PHONE_CONTEXT: &[&str] = &[
    "phone",
    "tel:",
    "tel.",
    "tel ",
    "telephone",
    "call",
    "mobile",
    "cell",
    "fax",
    "sms",
    "whatsapp",
];

// PHONE: North American numbers with separators (`(415) 555-2671`, `415.555.2671`,
// `+1 415-555-2671`; area code and exchange 2-9xx) not glued to an id (`ORD-415-555-2671`);
// space-only (`415 555 2671`) and bare 10-digit forms only after a word such as "phone" or "call"
// (tables of numbers look the same); and international `+CC ...` numbers of 8-15 digits, with a
// country code of 1-3 digits before the first separator (so `+2024-01-15` is not one).
fn find_phones(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.phone_nanp.find_iter(text) {
        let s = m.as_str().as_bytes();
        let starts_with_paren = s.first() == Some(&b'(');
        let glued = if starts_with_paren || s.first() == Some(&b'+') {
            byte_before(b, m.start()).is_some_and(is_word)
        } else {
            glued_before_id(b, m.start())
        };
        if glued || glued_after_id(b, m.end()) {
            continue;
        }
        let has_paren = s.contains(&b'(');
        let plus = s.first() == Some(&b'+');
        let sep_line = s.len().checked_sub(5).and_then(|i| s.get(i)).copied();
        let sep_area = s.len().checked_sub(9).and_then(|i| s.get(i)).copied();
        let spaces_only = !has_paren && sep_line == Some(b' ') && sep_area == Some(b' ');
        if spaces_only && !plus && !context_has(b, m.start(), 32, PHONE_CONTEXT) {
            continue;
        }
        out(m.start(), m.end());
    }
    for m in p.phone_bare.find_iter(text) {
        if !glued_before_id(b, m.start())
            && !glued_after_id(b, m.end())
            && context_has(b, m.start(), 32, PHONE_CONTEXT)
        {
            out(m.start(), m.end());
        }
    }
    for m in p.phone_intl.find_iter(text) {
        if intl_phone_ok(b, m.start(), m.end(), m.as_str().as_bytes()) {
            out(m.start(), m.end());
        }
    }
}

/// The checks on an international `+...` candidate.
fn intl_phone_ok(b: &[u8], start: usize, end: usize, s: &[u8]) -> bool {
    // `a+12345678`, `x)+1234...` are arithmetic.
    if matches!(byte_before(b, start), Some(c) if is_word(c) || c == b')' || c == b']')
        || glued_after(b, end)
    {
        return false;
    }
    let digits = s.iter().filter(|c| c.is_ascii_digit()).count();
    if !(8..=15).contains(&digits) {
        return false;
    }
    let body = s.get(1..).unwrap_or_default();
    let country = body.iter().take_while(|c| c.is_ascii_digit()).count();
    if country < body.len() && country > 3 {
        return false;
    }
    let (opens, closes) = s.iter().fold((0, 0), |(o, c), &x| match x {
        b'(' => (o + 1, c),
        b')' => (o, c + 1),
        _ => (o, c),
    });
    if opens != closes || opens > 1 {
        return false;
    }
    if opens == 1 {
        let open = s.iter().position(|&c| c == b'(');
        let close = s.iter().position(|&c| c == b')');
        if open > close {
            return false;
        }
    }
    // No doubled separators (`1--2`, `1. 2`).
    !s.windows(2)
        .any(|w| matches!(w, [b' ' | b'.' | b'-', b' ' | b'.' | b'-']))
}

const SSN_CONTEXT: &[&str] = &["ssn", "social security", "ss#", "ss no", "ss num"];

// US_SOCIAL_SECURITY_NUMBER: `ddd-dd-dddd` not glued to an id, excluding areas 000, 666 and
// 900-999, group 00 and serial 0000; `ddd dd dddd` and bare `ddddddddd` only after "SSN" or
// "social security" (otherwise they are ordinary numbers).
fn find_ssn(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.ssn.find_iter(text) {
        if glued_before_id(b, m.start()) || glued_after_id(b, m.end()) {
            continue;
        }
        let s = m.as_str().as_bytes();
        if !s.contains(&b'-') && !context_has(b, m.start(), 32, SSN_CONTEXT) {
            continue;
        }
        let d = digits_of(s);
        let area = number(d.get(0..3).unwrap_or_default());
        let group = number(d.get(3..5).unwrap_or_default());
        let serial = number(d.get(5..9).unwrap_or_default());
        if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
            continue;
        }
        out(m.start(), m.end());
    }
}

// URL: `http://`, `https://` or `ftp://` and a host, up to whitespace or a quote, without the
// trailing punctuation of the sentence around it (`.`, `,`, an unbalanced `)`...).
fn find_urls(p: &Patterns, text: &str, out: &mut dyn FnMut(usize, usize)) {
    let b = text.as_bytes();
    for m in p.url.find_iter(text) {
        if byte_before(b, m.start()).is_some_and(is_word) {
            continue;
        }
        let bytes = m.as_str().as_bytes();
        // Opened minus closed brackets, counted once and kept up to date while trimming, so a
        // URL ending in a long run of `)` costs linear time.
        let (mut paren, mut square, mut curly) = (0i64, 0i64, 0i64);
        for &c in bytes {
            match c {
                b'(' => paren += 1,
                b')' => paren -= 1,
                b'[' => square += 1,
                b']' => square -= 1,
                b'{' => curly += 1,
                b'}' => curly -= 1,
                _ => {}
            }
        }
        let mut end = bytes.len();
        while let Some(&c) = end.checked_sub(1).and_then(|i| bytes.get(i)) {
            let unbalanced = match c {
                b'.' | b',' | b';' | b':' | b'!' | b'?' | b'*' => true,
                b')' => paren < 0,
                b']' => square < 0,
                b'}' => curly < 0,
                _ => false,
            };
            if !unbalanced {
                break;
            }
            match c {
                b')' => paren += 1,
                b']' => square += 1,
                b'}' => curly += 1,
                _ => {}
            }
            end -= 1;
        }
        let host_ok = m
            .as_str()
            .get(..end)
            .and_then(|s| s.split_once("://"))
            .and_then(|(_, rest)| rest.bytes().next())
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'[' || !c.is_ascii());
        if host_ok {
            out(m.start(), m.start() + end);
        }
    }
}
