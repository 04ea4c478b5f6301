//! Name normalisation for schema keys.
//!
//! [`snake_case`] reproduces the behaviour of Segment's Go library
//! `github.com/segmentio/go-snakecase` byte for byte, so that keys produced
//! here match the ones Segment's own pipeline produces.

/// Segment's `snake_case` of a name (go-snakecase).
///
/// The input is treated as raw bytes:
///
/// * ASCII letters are lower-cased, ASCII digits are kept (leading ones too);
/// * every other byte (`_`, `.`, `-`, `$`, space, NUL, and every byte of a
///   non-ASCII character) separates words; runs of separators collapse to a
///   single `_`, and leading/trailing separators are dropped;
/// * a word is a run of upper-case letters/digits followed by a run of
///   lower-case letters/digits, so acronyms stay glued to the next word
///   (`CStringRef` → `cstring_ref`, `HTTPServer` → `httpserver`); a new word
///   starts at an upper-case letter once the lower-case part of a word has
///   begun (`userID` → `user_id`, `abc1Def` → `abc1_def`), but digits inside
///   the upper-case part do not split (`V2API` → `v2api`);
/// * exception: if the already-snake-case head of the input has no lower-case
///   letter yet (or none since its last `_`), an upper-case letter right after
///   it is glued on instead of starting a new word (`2FA` → `2fa`,
///   `edf_6N` → `edf_6n`).
///
/// An input with nothing but separators yields an empty string.
#[must_use]
pub fn snake_case(s: &str) -> String {
    let bytes = s.as_bytes();
    let len = bytes.len();

    // Measure the head of the input that is already valid snake_case: lower
    // case letters and digits, plus single underscores sitting between two
    // such bytes. Remember whether it contains a lower-case letter at all and
    // whether it contains one after its last underscore.
    let mut head = 0;
    let mut head_has_lower = false;
    let mut head_has_underscore = false;
    let mut lower_since_underscore = false;
    while head < len {
        match bytes[head] {
            b'a'..=b'z' => {
                head_has_lower = true;
                lower_since_underscore |= head_has_underscore;
            }
            b'0'..=b'9' => {}
            b'_' if head > 0 && head + 1 < len && is_lower_or_digit(bytes[head + 1]) => {
                head_has_underscore = true;
                lower_since_underscore = false;
            }
            _ => break,
        }
        head += 1;
    }

    if head == len {
        // Nothing to change.
        return s.to_owned();
    }

    // Every byte of the head is ASCII, so `head` is a char boundary.
    let mut out = String::with_capacity(len + len / 4 + 4);
    out.push_str(&s[..head]);

    let mut i = head;
    if bytes[i].is_ascii_uppercase() && (!head_has_lower || (head_has_underscore && !lower_since_underscore)) {
        // Continue the head's last word instead of starting a new one.
        i = push_word(bytes, i, &mut out);
    }

    while i < len {
        if bytes[i].is_ascii_alphanumeric() {
            if !out.is_empty() {
                out.push('_');
            }
            i = push_word(bytes, i, &mut out);
        } else {
            i += 1;
        }
    }
    out
}

#[inline]
fn is_lower_or_digit(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Appends the word starting at `bytes[i]` (a run of upper-case letters and
/// digits, then a run of lower-case letters and digits) in lower case, and
/// returns the index just past it. Advances by at least one byte whenever
/// `bytes[i]` is an ASCII letter or digit.
#[inline]
fn push_word(bytes: &[u8], mut i: usize, out: &mut String) -> usize {
    while i < bytes.len() && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit()) {
        out.push(char::from(bytes[i].to_ascii_lowercase()));
        i += 1;
    }
    while i < bytes.len() && is_lower_or_digit(bytes[i]) {
        out.push(char::from(bytes[i]));
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    /// Every case from go-snakecase's `snake_test.go` (duplicates included).
    const GO_CASES: &[(&str, &str)] = &[
        ("@49L0S145_¬fwHƒ0TSLNVp", "49l0s145_fw_h_0tslnvp"),
        ("lk0B@bFmjrLQ_Z6YL", "lk0_b_b_fmjr_lq_z6yl"),
        ("samPLE text", "sam_ple_text"),
        ("sample text", "sample_text"),
        ("sample-text", "sample_text"),
        ("sample_text", "sample_text"),
        ("sample___text", "sample_text"),
        ("sampleText", "sample_text"),
        ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
        ("sample 2 Text", "sample_2_text"),
        ("   sample   2    Text   ", "sample_2_text"),
        ("   $#$sample   2    Text   ", "sample_2_text"),
        ("SAMPLE 2 TEXT", "sample_2_text"),
        ("___$$Base64Encode", "base64_encode"),
        ("FOO:BAR$BAZ", "foo_bar_baz"),
        ("FOO#BAR#BAZ", "foo_bar_baz"),
        ("something.com", "something_com"),
        ("$something%", "something"),
        ("something.com", "something_com"),
        ("•¶§ƒ˚foo˙∆˚¬", "foo"),
        ("CStringRef", "cstring_ref"),
        ("5test", "5test"),
        ("test5", "test5"),
        ("THE5r", "the5r"),
        ("5TEst", "5test"),
        ("_5TEst", "5test"),
        ("@%#&5TEst", "5test"),
        ("edf_6N", "edf_6n"),
        ("f_pX9", "f_p_x9"),
        ("p_z9Rg", "p_z9_rg"),
        ("2FA Enabled", "2fa_enabled"),
        ("Enabled 2FA", "enabled_2fa"),
    ];

    /// Cases from the project's docs plus behaviour pinned down from the Go
    /// algorithm (acronyms, digits, underscores, non-ASCII, control bytes).
    const EXTRA_CASES: &[(&str, &str)] = &[
        // Project docs.
        ("userID", "user_id"),
        ("a.b", "a_b"),
        ("a-b", "a_b"),
        ("a$b", "a_b"),
        ("a b", "a_b"),
        ("a.-$ b", "a_b"),
        // Acronym runs swallow the first letter of the next word.
        ("HTTPServer", "httpserver"),
        ("XMLHttpRequest", "xmlhttp_request"),
        ("userIDs", "user_ids"),
        ("ID", "id"),
        ("Id", "id"),
        ("iPhone", "i_phone"),
        ("PascalCase", "pascal_case"),
        // Digits.
        ("abc1Def", "abc1_def"),
        ("ABC1def", "abc1def"),
        ("v2Api", "v2_api"),
        ("V2API", "v2api"),
        ("A1B", "a1b"),
        ("1Bar", "1bar"),
        ("123", "123"),
        ("a1b2c3", "a1b2c3"),
        ("foo1Bar", "foo1_bar"),
        ("foo_1Bar", "foo_1bar"),
        ("foo_bar1Baz", "foo_bar1_baz"),
        ("42 Is The Answer", "42_is_the_answer"),
        // Underscores.
        ("already_snake_case", "already_snake_case"),
        ("_leading", "leading"),
        ("trailing_", "trailing"),
        ("__both__", "both"),
        ("a__b", "a_b"),
        ("snake_Case", "snake_case"),
        ("a_B", "a_b"),
        ("_A", "a"),
        // Only separators.
        ("", ""),
        ("_", ""),
        ("___", ""),
        ("$$$", ""),
        (" . - $ _ ", ""),
        ("\0", ""),
        ("\0\0\0", ""),
        ("ßüé", ""),
        ("🎉", ""),
        // Non-ASCII bytes are separators.
        ("Größe", "gr_e"),
        ("größe", "gr_e"),
        ("naïve", "na_ve"),
        ("🎉party🎉", "party"),
        ("userName🚀ID", "user_name_id"),
        ("日本語Key", "key"),
        ("ß_ƒ_foo", "foo"),
        ("ẞ•¶§ƒ˚foo˙∆˚¬", "foo"),
        // Control bytes, NUL included.
        ("a\0b", "a_b"),
        ("\0lead", "lead"),
        ("trail\0", "trail"),
        ("A\0B", "a_b"),
        ("here\nis\ta\r\nstring", "here_is_a_string"),
        ("\"hello world\"", "hello_world"),
        // Single bytes.
        ("a", "a"),
        ("A", "a"),
        ("7", "7"),
    ];

    fn check(cases: &[(&str, &str)]) {
        for &(input, want) in cases {
            assert_eq!(snake_case(input), want, "snake_case({input:?})");
        }
    }

    #[test]
    fn go_snakecase_cases() {
        check(GO_CASES);
    }

    #[test]
    fn extra_cases() {
        check(EXTRA_CASES);
    }

    #[test]
    fn idempotent() {
        for &(input, _) in GO_CASES.iter().chain(EXTRA_CASES) {
            let once = snake_case(input);
            assert_eq!(snake_case(&once), once, "not idempotent for {input:?}");
        }
    }

    #[test]
    fn output_shape() {
        for &(input, _) in GO_CASES.iter().chain(EXTRA_CASES) {
            let out = snake_case(input);
            assert!(!out.starts_with('_') && !out.ends_with('_'), "{out:?}");
            assert!(!out.contains("__"), "{out:?}");
            assert!(out.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{out:?}");
        }
    }

    #[test]
    fn very_long_inputs() {
        let n = 100_000;

        let unchanged = "a".repeat(n);
        assert_eq!(snake_case(&unchanged), unchanged);

        assert_eq!(snake_case(&"A".repeat(n)), "a".repeat(n));
        assert_eq!(snake_case(&"$".repeat(n)), "");
        assert_eq!(snake_case(&"_".repeat(n)), "");
        assert_eq!(snake_case(&"\0".repeat(n)), "");
        assert_eq!(snake_case(&"é".repeat(n)), "");

        // "aBaB…aB" → "a" then "_ba" for every following pair, then "_b".
        let camel = "aB".repeat(n / 2);
        let want = format!("a{}_b", "_ba".repeat(n / 2 - 1));
        assert_eq!(snake_case(&camel), want);

        let words = "Word ".repeat(n / 5);
        assert_eq!(snake_case(&words), vec!["word"; n / 5].join("_"));

        let mut mixed = String::with_capacity(n * 2);
        while mixed.len() < n {
            mixed.push_str("userID.🎉-Größe$2FA\0");
        }
        let out = snake_case(&mixed);
        assert!(out.starts_with("user_id_gr_e_2fa_user_id"));
        assert!(!out.ends_with('_'));
    }
}
