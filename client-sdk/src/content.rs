//! The plaintext of a message (`medrelay.e2e.v1.Content`), padded so its length leaks less.
//!
//! The encoded `Content` is padded with random bytes in its `padding` field until its length is
//! a multiple of [`CONTENT_PADDING_BUCKET`] (64) bytes, in the spirit of Signal's message
//! padding: an observer of ciphertext lengths learns the bucket, not the exact length.
//!
//! Note: prost's derived `Debug` of [`Content`] prints the text; never log a `Content`.

pub use medrelay_proto::e2e::Content;
use prost::bytes::Bytes;
use prost::Message;
use rand_core::{CryptoRng, RngCore};

use crate::error::ContentError;
use crate::limits::CONTENT_PADDING_BUCKET;
use crate::secret::SecretBytes;

/// Encodes `content` with random padding to the next multiple of [`CONTENT_PADDING_BUCKET`]
/// bytes (any `padding` already set is replaced).
pub fn encode_padded(content: &Content, rng: &mut (impl RngCore + CryptoRng)) -> SecretBytes {
    let mut padded = content.clone();
    padded.padding = Bytes::new();
    // Adding the field costs 1 tag byte + a length varint + the bytes, so some length below
    // 2 * BUCKET + 4 always lands on a bucket boundary.
    for len in 0..(2 * CONTENT_PADDING_BUCKET + 4) {
        let mut pad = vec![0u8; len];
        rng.fill_bytes(&mut pad);
        padded.padding = Bytes::from(pad);
        // `is_multiple_of` needs Rust 1.87; the workspace declares 1.85.
        #[allow(clippy::manual_is_multiple_of)]
        let on_bucket = padded.encoded_len() % CONTENT_PADDING_BUCKET == 0;
        if on_bucket {
            break;
        }
    }
    let encoded = padded.encode_to_vec();
    // Best effort: wipe our copy of the text.
    padded.text.clear();
    SecretBytes::new(encoded)
}

/// Decodes a decrypted `Content` (padding is kept in the struct and can be ignored).
pub fn decode(bytes: &[u8]) -> Result<Content, ContentError> {
    Content::decode(bytes).map_err(|_| ContentError::Malformed)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn every_length_lands_on_a_bucket_and_round_trips() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in 0..300 {
            let c = Content {
                client_message_id: Bytes::from(vec![1u8; 16]),
                conversation_id: Bytes::from(vec![2u8; 16]),
                sent_at_ms: 1_700_000_000_000,
                text: "x".repeat(n),
                padding: Bytes::new(),
            };
            let enc = encode_padded(&c, &mut rng);
            assert_eq!(enc.len() % CONTENT_PADDING_BUCKET, 0, "text length {n}");
            let back = decode(enc.expose_secret()).unwrap();
            assert_eq!(back.text, c.text);
            assert_eq!(back.sent_at_ms, c.sent_at_ms);
        }
    }
}
