use super::*;
use k8s_ai_api::guardrail_policy::{PiiEntity, RegexRule};

const POSITIVES: &str = include_str!("../../tests/pii-corpus/positives.txt");
const NEGATIVES: &str = include_str!("../../tests/pii-corpus/negatives.txt");

fn policy(types: &[(PiiEntityType, PiiAction)]) -> SensitiveInformationPolicy {
    SensitiveInformationPolicy {
        pii_entities: types
            .iter()
            .map(|&(type_, action)| PiiEntity { type_, action })
            .collect(),
        regexes: Vec::new(),
    }
}

fn all(action: PiiAction) -> PiiFilter {
    let types: Vec<_> = detected_types().iter().map(|&t| (t, action)).collect();
    PiiFilter::new(&policy(&types)).unwrap()
}

fn only(t: PiiEntityType) -> PiiFilter {
    PiiFilter::new(&policy(&[(t, PiiAction::Anonymize)])).unwrap()
}

fn name(t: PiiEntityType) -> String {
    serde_json::to_value(t)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// The masked text with only `t` enabled.
fn mask(t: PiiEntityType, text: &str) -> String {
    only(t).apply(text).unwrap().into_owned()
}

fn assert_detects(t: PiiEntityType, text: &str, expected: &str) {
    assert_eq!(mask(t, text), expected, "{t:?} on {text:?}");
}

fn assert_ignores(t: PiiEntityType, text: &str) {
    let out = only(t).apply(text).unwrap();
    assert!(
        matches!(out, Cow::Borrowed(_)),
        "{t:?} matched in {text:?}: {out}"
    );
}

#[test]
fn builtin_patterns_compile_and_names_match_serde() {
    assert!(PATTERNS.is_ok(), "{:?}", PATTERNS.as_ref().err());
    for &t in detected_types() {
        let b = Builtin::of(t).unwrap();
        assert_eq!(b.entity(), name(t));
    }
    assert!(Builtin::of(PiiEntityType::Name).is_none());
}

#[test]
fn filter_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PiiFilter>();
}

#[test]
fn empty_policy_and_undetected_types() {
    let f = PiiFilter::new(&SensitiveInformationPolicy::default()).unwrap();
    assert!(f.is_empty());
    let f = PiiFilter::new(&policy(&[
        (PiiEntityType::Name, PiiAction::Block),
        (PiiEntityType::Address, PiiAction::Anonymize),
    ]))
    .unwrap();
    assert!(f.is_empty());
    assert!(matches!(
        f.apply("bob@example.com").unwrap(),
        Cow::Borrowed(_)
    ));
    assert!(!all(PiiAction::Block).is_empty());
}

#[test]
fn nothing_matched_is_borrowed() {
    let f = all(PiiAction::Anonymize);
    assert!(matches!(
        f.apply("nothing to see here, version 1.2.3").unwrap(),
        Cow::Borrowed(_)
    ));
    assert!(matches!(f.apply("").unwrap(), Cow::Borrowed(_)));
}

#[test]
fn aws_access_key() {
    let t = PiiEntityType::AwsAccessKey;
    assert_detects(
        t,
        "key AKIAIOSFODNN7EXAMPLE here",
        "key {AWS_ACCESS_KEY} here",
    );
    assert_detects(t, "id=ASIAY34FZKBOKMUTVV7A;", "id={AWS_ACCESS_KEY};");
    for prefix in ["AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "ASCA"] {
        assert_detects(t, &format!("{prefix}ABCDEFGHIJ234567"), "{AWS_ACCESS_KEY}");
    }
    assert_ignores(t, "AKIAIOSFODNN7EXAMPL"); // 15 after the prefix
    assert_ignores(t, "AKIAIOSFODNN7EXAMPLEX"); // 17: part of a longer word
    assert_ignores(t, "XAKIAIOSFODNN7EXAMPLE");
    assert_ignores(t, "akiaiosfodnn7example");
    assert_ignores(t, "ABIAIOSFODNN7EXAMPLE");
}

#[test]
fn aws_secret_key() {
    let t = PiiEntityType::AwsSecretKey;
    let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    assert_detects(t, &format!("secret: {key}"), "secret: {AWS_SECRET_KEY}");
    assert_detects(t, &format!("{key}."), "{AWS_SECRET_KEY}.");
    // No `/` or `+`: needs the word secret or aws before it.
    let plain = "Zq4rT8mW2nXk7pLs9VbC3yHd6JfG1uEa5oKiN0tR";
    assert_ignores(t, &format!("token {plain}"));
    assert_detects(
        t,
        &format!("AWS_SECRET_ACCESS_KEY={plain}"),
        "AWS_SECRET_ACCESS_KEY={AWS_SECRET_KEY}",
    );
    // Git SHA (no upper case), 41 chars, padded base64, a path, an identifier.
    assert_ignores(t, "secret 3f2b1c4e5d6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c");
    assert_ignores(t, &format!("{key}Z"));
    assert_ignores(t, &format!("{key}=="));
    assert_ignores(t, "src/main/java/com/Example/Service2/Impl/");
    assert_ignores(t, "com/example/orders/service/Impl2/Handler");
    assert_ignores(t, "class ThisIsAVeryLongJavaClassNameForTesting12");
    // With the context word the weak form accepts any such token: documented trade-off.
    assert_detects(
        t,
        "secret ThisIsAVeryLongJavaClassNameForTesting12",
        "secret {AWS_SECRET_KEY}",
    );
}

#[test]
fn email() {
    let t = PiiEntityType::Email;
    assert_detects(
        t,
        "mail bob.smith+tag@example.co.uk now",
        "mail {EMAIL} now",
    );
    assert_detects(t, "<jane_doe@sub.example.com>", "<{EMAIL}>");
    assert_detects(t, "...bob@example.com", "...{EMAIL}");
    assert_ignores(t, "npm i lodash@4.17.21");
    assert_ignores(t, "logo@2x.png and icon@3X.webp");
    assert_ignores(t, "ssh user@localhost");
    assert_ignores(t, "@types/node and @app.route");
    assert_ignores(t, "image nginx@sha256:0123abcd");
}

#[test]
fn credit_card() {
    let t = PiiEntityType::CreditDebitCardNumber;
    let m = "{CREDIT_DEBIT_CARD_NUMBER}";
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "2223003122003222",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "3530111333300000",
        "30569309025904",
        "4222222222222",
        "6200000000000005",
        "5018901092815909",
    ] {
        assert_detects(t, &format!("card {card}."), &format!("card {m}."));
    }
    assert_detects(t, "qty 2 4111 1111 1111 1111 ok", &format!("qty 2 {m} ok"));
    assert_ignores(t, "4111111111111112"); // Luhn
    assert_ignores(t, "4111 1111 1111 1112");
    assert_ignores(t, "1715781045123"); // epoch millis: no issuer starts with 1
    assert_ignores(t, "41111111111111110"); // 17 digits, not a Visa length
    assert_ignores(t, "94111111111111111"); // inside a longer number
    assert_ignores(t, "ID4111111111111111");
    assert_ignores(t, "4111-1111 1111-1111"); // mixed separators
    assert_ignores(t, "12-4111-1111-1111-1111"); // part of a dashed id
    assert_ignores(t, "3.4111111111111111");
    // 17-19 contiguous digits need a card word: otherwise they are 64-bit ids and constants.
    assert_ignores(t, "id 4786666176031372157");
    assert_ignores(t, "6292440268599528906,");
    assert_detects(t, "visa 4786666176031372157", &format!("visa {m}"));
    assert_detects(
        t,
        "UnionPay: 6292440268599528906",
        &format!("UnionPay: {m}"),
    );
    assert_detects(t, "4786 6661 7603 1372 157", m);
    // Issuer prefixes: 1, 7, 8, 9 and unassigned 5x/6x ranges are not cards.
    assert_ignores(t, "5964946855123292381");
    assert_ignores(t, "6651586784672005225");
    assert_ignores(t, "7992739871300000");
}

#[test]
fn ssn() {
    let t = PiiEntityType::UsSocialSecurityNumber;
    let m = "{US_SOCIAL_SECURITY_NUMBER}";
    assert_detects(t, "ssn 123-45-6789.", &format!("ssn {m}."));
    assert_detects(t, "id 219-09-9999", &format!("id {m}"));
    assert_detects(t, "SSN: 123456789", &format!("SSN: {m}"));
    assert_detects(
        t,
        "Social Security 123 45 6789",
        &format!("Social Security {m}"),
    );
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "999-12-3456",
        "123-00-4567",
        "123-45-0000",
    ] {
        assert_ignores(t, bad);
    }
    assert_ignores(t, "order 123456789");
    assert_ignores(t, "className 123456789");
    assert_ignores(t, "123 45 6789");
    assert_ignores(t, "1123-45-6789");
    assert_ignores(t, "123-45-67890");
    assert_ignores(t, "REF-123-45-6789");
    assert_ignores(t, "2024-01-15");
}

#[test]
fn ipv4() {
    let t = PiiEntityType::IpAddress;
    assert_detects(t, "from 192.168.1.10:8080", "from {IP_ADDRESS}:8080");
    assert_detects(t, "cidr 10.0.0.0/16.", "cidr {IP_ADDRESS}/16.");
    assert_detects(t, "ip:255.255.255.255", "ip:{IP_ADDRESS}");
    // Decision: a bare dotted quad of valid octets is an address, even 1.2.3.4.
    assert_detects(t, "try 1.2.3.4", "try {IP_ADDRESS}");
    assert_ignores(t, "256.1.1.1");
    assert_ignores(t, "1.2.3.4.5");
    assert_ignores(t, "OID 1.3.6.1.4.1.311");
    assert_ignores(t, "v1.2.3.4");
    assert_ignores(t, "version 1.2.3.4");
    assert_ignores(t, "\"version\": \"2.4.1.0\"");
    assert_ignores(t, "1.2.3");
    assert_ignores(t, "10.0.19045.4291");
    assert_ignores(t, "see RFC 5280 4.1.2.6 and rfc5280#section-4.1.2.6");
    assert_ignores(t, "\u{a7} 3.2.1.3");
    assert_ignores(t, "OID 1.3.101.110 and Release 2.0.5.4");
}

#[test]
fn ipv6() {
    let t = PiiEntityType::IpAddress;
    assert_detects(t, "addr 2001:db8::8a2e:370:7334 up", "addr {IP_ADDRESS} up");
    assert_detects(t, "[fe80::1]:8080", "[{IP_ADDRESS}]:8080");
    assert_detects(
        t,
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334.",
        "{IP_ADDRESS}.",
    );
    assert_detects(t, "::ffff:192.0.2.128", "{IP_ADDRESS}");
    assert_detects(t, "addr:2001:db8::1 up", "addr:{IP_ADDRESS} up");
    assert_detects(t, "on fe80::1: no route", "on {IP_ADDRESS}: no route");
    for code in [
        "std::sync::LazyLock",
        "Add::add(a, b)",
        "dead::beef",
        "x[1::2]",
        "::",
        "12:30:45",
        "2024-05-15T12:30:45.123Z",
        "00:1a:2b:3c:4d:5e",
        "arn:aws:iam::123456789012:role/app",
        "use e2e::{Cluster, repo_root};",
        "f64::consts::PI and b64::{encode}",
    ] {
        assert_ignores(t, code);
    }
}

#[test]
fn phone() {
    let t = PiiEntityType::Phone;
    let m = "{PHONE}";
    for phone in [
        "(415) 555-2671",
        "(415)555-2671",
        "415-555-2671",
        "415.555.2671",
        "+1 415-555-2671",
        "1-800-555-0199",
        "+1 (415) 555-2671",
        "+14155552671",
        "+44 20 7946 0958",
        "+49 30 901820",
        "+33 1 42 68 53 00",
        "+81-3-1234-5678",
        "+44 (0)20 7946 0958",
    ] {
        assert_detects(t, &format!("call {phone}."), &format!("call {m}."));
        assert_detects(t, &format!("x {phone}"), &format!("x {m}"));
    }
    assert_detects(t, "phone: 4155552671", &format!("phone: {m}"));
    assert_detects(t, "Tel. 415 555 2671", &format!("Tel. {m}"));
    assert_ignores(t, "id 4155552671");
    assert_ignores(t, "sizes 512 256 1024");
    assert_ignores(t, "123-456-7890"); // area codes start with 2-9
    assert_ignores(t, "415-055-2671"); // so do exchanges
    assert_ignores(t, "ORD-415-555-2671");
    assert_ignores(t, "415-555-2671-B");
    assert_ignores(t, "2024-05-15 12:30:45");
    assert_ignores(t, "+2024-01-15");
    assert_ignores(t, "@@ -10,7 +10,8 @@");
    assert_ignores(t, "a+12345678");
    assert_ignores(t, "+1234567"); // too short
    assert_ignores(t, "+1234567890123456"); // too long for E.164
    assert_ignores(t, "version 1.2.3 build 20240515");
    assert_ignores(t, "hotel 4155552671");
}

#[test]
fn url() {
    let t = PiiEntityType::Url;
    assert_detects(t, "see https://example.com/a?b=c.", "see {URL}.");
    assert_detects(t, "[doc](http://example.com/x_(y)) ok", "[doc]({URL}) ok");
    assert_detects(t, "(FTP://files.example.org/pub)", "({URL})");
    assert_detects(t, "\"url\":\"https://x.io/p\"", "\"url\":\"{URL}\"");
    assert_ignores(t, "registry.example.com/team/app:1.4.2");
    assert_ignores(t, "https:// nothing");
    assert_ignores(t, "xhttp://example.com");
    assert_ignores(t, "file:///etc/hosts");
}

#[test]
fn block_wins_over_anonymize_and_names_the_entity() {
    let f = PiiFilter::new(&policy(&[
        (PiiEntityType::Email, PiiAction::Anonymize),
        (PiiEntityType::AwsAccessKey, PiiAction::Block),
    ]))
    .unwrap();
    assert_eq!(f.apply("mail bob@example.com").unwrap(), "mail {EMAIL}");
    let err = f
        .apply("mail bob@example.com key AKIAIOSFODNN7EXAMPLE")
        .unwrap_err();
    assert_eq!(err.entity, "AWS_ACCESS_KEY");
    assert!(err.to_string().contains("AWS_ACCESS_KEY"));
    // A BLOCK match inside an ANONYMIZE one still blocks.
    let f = PiiFilter::new(&policy(&[
        (PiiEntityType::Url, PiiAction::Anonymize),
        (PiiEntityType::IpAddress, PiiAction::Block),
    ]))
    .unwrap();
    assert_eq!(
        f.apply("http://10.1.2.3/x").unwrap_err().entity,
        "IP_ADDRESS"
    );
    // The earliest BLOCK match names the entity.
    let f = all(PiiAction::Block);
    let err = f.apply("ip 10.1.2.3 then bob@example.com").unwrap_err();
    assert_eq!(err.entity, "IP_ADDRESS");
    // A type listed twice keeps the stricter action.
    let f = PiiFilter::new(&policy(&[
        (PiiEntityType::Email, PiiAction::Anonymize),
        (PiiEntityType::Email, PiiAction::Block),
    ]))
    .unwrap();
    assert_eq!(f.apply("bob@example.com").unwrap_err().entity, "EMAIL");
}

fn custom(name: &str, pattern: &str, action: PiiAction) -> RegexRule {
    RegexRule {
        name: name.to_owned(),
        description: None,
        pattern: pattern.to_owned(),
        action,
    }
}

#[test]
fn custom_regexes() {
    let mut p = policy(&[(PiiEntityType::Email, PiiAction::Anonymize)]);
    p.regexes = vec![
        custom("employee-id", r"EMP-[0-9]{6}", PiiAction::Anonymize),
        custom("PROJECT_X", r"(?i)project\s+x", PiiAction::Block),
        custom("empty", r"z*", PiiAction::Anonymize),
    ];
    let f = PiiFilter::new(&p).unwrap();
    assert_eq!(
        f.apply("EMP-123456 mailed bob@example.com, EMP-654321")
            .unwrap(),
        "{employee-id} mailed {EMAIL}, {employee-id}"
    );
    // Empty matches are ignored.
    assert!(matches!(f.apply("abc").unwrap(), Cow::Borrowed(_)));
    assert_eq!(f.apply("about Project  X").unwrap_err().entity, "PROJECT_X");
}

#[test]
fn bad_custom_regexes_are_errors_naming_them() {
    let mut p = SensitiveInformationPolicy {
        regexes: vec![custom("broken", r"(unclosed", PiiAction::Block)],
        ..SensitiveInformationPolicy::default()
    };
    let err = PiiFilter::new(&p).unwrap_err();
    assert!(matches!(&err, PiiError::InvalidRegex { name, .. } if name == "broken"));
    assert!(err.to_string().contains("broken"), "{err}");

    p.regexes = vec![custom("lookahead", r"a(?=b)", PiiAction::Block)];
    assert!(matches!(
        PiiFilter::new(&p),
        Err(PiiError::InvalidRegex { .. })
    ));

    p.regexes = vec![custom("huge", r"\w{1000}{1000}", PiiAction::Block)];
    let err = PiiFilter::new(&p).unwrap_err();
    assert!(
        matches!(&err, PiiError::InvalidRegex { name, .. } if name == "huge"),
        "{err}"
    );

    p.regexes = vec![custom("has space", "a", PiiAction::Block)];
    assert!(matches!(PiiFilter::new(&p), Err(PiiError::InvalidName(_))));
    p.regexes = vec![custom("", "a", PiiAction::Block)];
    assert!(matches!(PiiFilter::new(&p), Err(PiiError::InvalidName(_))));
}

#[test]
fn overlapping_matches_do_not_corrupt_the_text() {
    let f = all(PiiAction::Anonymize);
    // IP and email inside a URL: the URL starts first and is longest.
    assert_eq!(
        f.apply("go http://10.0.0.1/u/bob@example.com now").unwrap(),
        "go {URL} now"
    );
    // A custom regex overlapping a built-in on the left.
    let mut p = policy(&[(PiiEntityType::Email, PiiAction::Anonymize)]);
    p.regexes = vec![custom("ticket", r"T-[0-9]+ bob", PiiAction::Anonymize)];
    let f2 = PiiFilter::new(&p).unwrap();
    assert_eq!(
        f2.apply("T-42 bob@example.com end").unwrap(),
        "{ticket}@example.com end"
    );
    // Same span twice: the first rule in the policy wins.
    p.regexes = vec![custom("mail", r"[a-z]+@example\.com", PiiAction::Anonymize)];
    let f3 = PiiFilter::new(&p).unwrap();
    assert_eq!(f3.apply("to bob@example.com").unwrap(), "to {EMAIL}");
    // Adjacent matches, multi-byte text around them.
    assert_eq!(
        f.apply("café bob@example.com,ann@example.org — 10.0.0.1 ünï")
            .unwrap(),
        "café {EMAIL},{EMAIL} — {IP_ADDRESS} ünï"
    );
}

#[test]
fn corpus_positives_are_detected_with_their_type() {
    let mut count = 0;
    for (n, line) in POSITIVES.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (ty, text) = line.split_once('\t').expect("TYPE<TAB>text");
        let t: PiiEntityType = serde_json::from_value(serde_json::json!(ty)).unwrap();
        let f = PiiFilter::new(&policy(&[(t, PiiAction::Block)])).unwrap();
        let err = f
            .apply(text)
            .expect_err(&format!("line {}: {ty} missed in {text:?}", n + 1));
        assert_eq!(err.entity, ty);
        let masked = mask(t, text);
        assert!(
            masked.contains(&format!("{{{ty}}}")),
            "line {}: {masked}",
            n + 1
        );
        count += 1;
    }
    eprintln!("pii corpus: {count} positive lines, all detected");
    assert!(count >= 100, "{count}");
}

#[test]
fn corpus_negatives_false_positive_rate() {
    let f = all(PiiAction::Block);
    let mut total = 0usize;
    let mut flagged = Vec::new();
    for line in NEGATIVES.lines() {
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        if let Err(e) = f.apply(line) {
            flagged.push(format!("{}: {line}", e.entity));
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = flagged.len() as f64 / total as f64;
    eprintln!(
        "pii corpus: {total} negative lines, {} false positives ({:.2}%)",
        flagged.len(),
        rate * 100.0
    );
    for f in &flagged {
        eprintln!("  false positive {f}");
    }
    assert!(total >= 150, "{total}");
    assert!(rate <= 0.01, "{flagged:#?}");
}

#[test]
fn adversarial_mebibyte_inputs_finish() {
    let f = all(PiiAction::Anonymize);
    let mib = 1 << 20;
    let inputs = [
        "a@".repeat(mib / 2),
        "a@a.".repeat(mib / 4),
        "0".repeat(mib),
        "4111 ".repeat(mib / 5),
        "1 ".repeat(mib / 2),
        "1.".repeat(mib / 2),
        "a:".repeat(mib / 2),
        "1:".repeat(mib / 2),
        "+1 ".repeat(mib / 3),
        "http://".repeat(mib / 7),
        "A".repeat(mib),
        "Ab1/".repeat(mib / 4),
        "AKIA".repeat(mib / 4),
        "123-45-".repeat(mib / 7),
        "(415) ".repeat(mib / 6),
        "bob@example.com ".repeat(mib / 16),
        "é".repeat(mib / 2),
        format!("http://x{}", ")".repeat(mib)),
        format!("http://x{}", "(".repeat(mib)),
        ":".repeat(mib),
    ];
    for input in &inputs {
        let start = std::time::Instant::now();
        let masked = f.apply(input).unwrap().len();
        eprintln!(
            "adversarial {:?}...: {} bytes -> {masked}, {:?}",
            input.get(..8).unwrap_or(input),
            input.len(),
            start.elapsed()
        );
    }
}

#[test]
fn a_stream_releases_only_what_the_filter_has_seen_whole() {
    let f = PiiFilter::new(&policy(&[
        (PiiEntityType::Email, PiiAction::Anonymize),
        (PiiEntityType::AwsAccessKey, PiiAction::Block),
    ]))
    .unwrap();
    // An address still arriving (shorter than the window) is held back whole.
    let (out, used) = f
        .releasable("hello world, write to jane.doe@exa", 15)
        .unwrap();
    assert_eq!((out.as_str(), used), ("hello world, write ", 19));
    // Complete and behind the window: masked and released with the text before it.
    let pending = "jane.doe@example.com and more text here";
    let (out, used) = f.releasable(pending, 10).unwrap();
    assert_eq!(out, "{EMAIL} and more");
    assert_eq!(&pending[used..], " text here");
    // The end of the stream releases the rest.
    assert_eq!(
        f.releasable(" text here", 0).unwrap(),
        (" text here".to_owned(), 10)
    );
    // A BLOCK entity in the held-back part already stops the stream.
    assert!(f.releasable("ok AKIAIOSFODNN7EXAMPLE", 30).is_err());
    // Multi-byte text is never cut inside a character.
    let (out, used) = f.releasable("ééé", 1).unwrap();
    assert_eq!((out.as_str(), used), ("éé", 4));
}

#[test]
fn a_mask_that_completes_an_entity_masks_it_too_also_in_a_stream() {
    // Found by fuzzing (stream_events): `i@e.cx` is no address before `_`, but is one before
    // the `{EMAIL}` that replaces `_@e.cxample`.
    let f = only(PiiEntityType::Email);
    let text = "wri i@e.cx_@e.cxample.c; om";
    let whole = f.apply(text).unwrap().into_owned();
    assert!(matches!(f.apply(&whole), Ok(Cow::Borrowed(_))), "{whole}");
    for hold_back in [0, 3, 8, 12, 20] {
        let (first, used) = f.releasable(text, hold_back).unwrap();
        let (rest, _) = f.releasable(&text[used..], 0).unwrap();
        let streamed = format!("{first}{rest}");
        assert!(
            matches!(f.apply(&streamed), Ok(Cow::Borrowed(_))),
            "hold back {hold_back}: {streamed}"
        );
    }
}
