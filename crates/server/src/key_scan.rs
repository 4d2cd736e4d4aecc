//! Finding an API key in what a request would carry into a guest: as it is, or percent-decoded
//! as a guest's framework would read it. Pure; used by authentication (a path holding the
//! caller's key is logged redacted) and by the proxy (a request still carrying it is refused).

/// `%XX` sequences decoded (a malformed one is kept as it is), as a guest's framework would.
pub(crate) fn percent_decoded(text: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (text.get(i + 1).and_then(|b| hex(*b)), text.get(i + 2).and_then(|b| hex(*b)))
        {
            // Two hex digits: at most 0xff.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// Whether `haystack` holds `needle`, as it is or percent-decoded.
pub(crate) fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    let within = |h: &[u8]| !needle.is_empty() && h.windows(needle.len()).any(|w| w == needle);
    within(haystack) || (haystack.contains(&b'%') && within(&percent_decoded(haystack)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_plain_and_percent_encoded() {
        assert_eq!(percent_decoded(b"%41%4a%zz%4"), b"AJ%zz%4");
        let table: [(&str, &[u8], bool); 5] = [
            ("plain", b"/x/bht_k1/y", true),
            ("encoded", b"/x/%62ht_k1", true),
            ("absent", b"/x/y", false),
            ("a prefix is not the key", b"/x/bht_k", false),
            ("an empty needle never matches", b"", false),
        ];
        for (name, haystack, want) in table {
            assert_eq!(holds(haystack, b"bht_k1"), want, "{name}");
        }
        assert!(!holds(b"anything", b""));
    }
}
