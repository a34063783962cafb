//! The text form of folder keys: a type letter, a base32 body and one check
//! character, e.g. `W` + 52 characters + 1 for a read-write key.
//!
//! The body is RFC 4648 base32 (A–Z, 2–7) without padding. The check character
//! is a weighted sum over GF(32): with `c = 0`, each character's value `v`
//! (its index in the alphabet, the type letter included) updates `c = x·c + v`,
//! and the check character is the one that brings the final `c` to zero. The
//! field is GF(2)[x]/(x⁵ + x² + 1); `x` generates its multiplicative group of
//! order 31, so every single-character error and every swap of two distinct
//! characters fewer than 31 positions apart changes the sum. That is strictly
//! stronger than Luhn mod 32, which cannot see `A` and `7` (values 0 and 31)
//! trade places.
//!
//! Parsing upper-cases, ignores dashes and white space, and refuses anything
//! else with a [`KeyError`] naming the cause. Decoded secrets live in
//! zeroizing buffers.

use data_encoding::BASE32_NOPAD;
use zeroize::Zeroizing;

use super::KeyError;
use super::folder::KeyKind;

/// The RFC 4648 base32 alphabet.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// x⁵ + x² + 1, the modulus of GF(32) for the check character.
const GF32_MODULUS: u8 = 0b10_0101;

/// Multiplies an element of GF(32) by x.
fn times_x(c: u8) -> u8 {
    let shifted = c << 1;
    if shifted & 0b10_0000 != 0 {
        shifted ^ GF32_MODULUS
    } else {
        shifted
    }
}

/// The alphabet index of an upper-case base32 character.
fn value_of(ch: u8) -> Option<u8> {
    match ch {
        b'A'..=b'Z' => Some(ch - b'A'),
        b'2'..=b'7' => Some(ch - b'2' + 26),
        _ => None,
    }
}

/// The weighted GF(32) sum of upper-case base32 characters.
fn check_sum(chars: &[u8]) -> u8 {
    chars.iter().fold(0, |c, &ch| {
        times_x(c) ^ value_of(ch).expect("check_sum takes base32 text")
    })
}

/// The check character to append to `chars` (upper-case base32).
pub(crate) fn check_character(chars: &[u8]) -> u8 {
    ALPHABET[usize::from(times_x(check_sum(chars)))]
}

/// Characters in the base32 form of `n` bytes, without padding.
pub(crate) const fn base32_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// The full key string for `kind` with `payload` as its body.
pub(crate) fn encode_key(kind: KeyKind, payload: &[u8]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(base32_len(payload.len()) + 2));
    text.push(kind.letter());
    BASE32_NOPAD.encode_append(payload, &mut text);
    let check = check_character(text.as_bytes());
    text.push(char::from(check));
    text
}

/// Parses a key string into its type and body bytes.
pub(crate) fn decode_key(input: &str) -> Result<(KeyKind, Zeroizing<Vec<u8>>), KeyError> {
    let mut chars = Zeroizing::new(Vec::with_capacity(input.len()));
    let mut kind = None;
    for (index, ch) in input.chars().enumerate() {
        if ch == '-' || ch.is_whitespace() {
            continue;
        }
        let upper = ch.to_ascii_uppercase();
        if kind.is_none() {
            kind =
                Some(KeyKind::from_letter(upper).ok_or(KeyError::UnknownKeyType { letter: ch })?);
        } else if !upper.is_ascii() || value_of(upper as u8).is_none() {
            return Err(KeyError::InvalidCharacter {
                character: ch,
                position: index + 1,
            });
        }
        chars.push(upper as u8);
    }
    let kind = kind.ok_or(KeyError::EmptyKey)?;
    let expected = kind.text_len();
    if chars.len() != expected {
        return Err(KeyError::WrongLength {
            kind,
            expected,
            found: chars.len(),
        });
    }
    if check_sum(&chars) != 0 {
        return Err(KeyError::ChecksumMismatch);
    }
    let body = &chars[1..expected - 1];
    let mut bytes = Zeroizing::new(vec![0u8; kind.payload_len()]);
    match BASE32_NOPAD.decode_mut(body, &mut bytes) {
        Ok(n) if n == kind.payload_len() => Ok((kind, bytes)),
        _ => Err(KeyError::NonCanonicalKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gf32_times_x_has_order_31() {
        let mut c = 1u8;
        for step in 1..=31 {
            c = times_x(c);
            assert_eq!(c == 1, step == 31, "x^{step} = {c}");
        }
    }

    #[test]
    fn check_character_closes_the_sum() {
        let text = b"WABCDEFG7";
        let mut full = text.to_vec();
        full.push(check_character(text));
        assert_eq!(check_sum(&full), 0);
    }

    #[test]
    fn swap_of_a_and_7_is_caught_where_luhn_mod_32_misses_it() {
        let mut text = b"WAAAA7BBBB".to_vec();
        text.push(check_character(&text));
        text.swap(4, 5);
        assert_ne!(check_sum(&text), 0);
    }

    #[test]
    fn base32_lengths() {
        assert_eq!(base32_len(32), 52);
        assert_eq!(base32_len(64), 103);
    }
}
