//! XChaCha20-Poly1305 for sealing records at rest, as draft-irtf-cfrg-xchacha-03 §2 builds
//! it: HChaCha20 derives a subkey from the key and the nonce's first 16 bytes, and
//! ChaCha20-Poly1305 (RFC 8439) seals under that subkey with the nonce `0^4 || nonce[16..24]`.
//!
//! The output is byte for byte that of `chacha20poly1305::XChaCha20Poly1305`, which the
//! tests check on the draft's vector and on random inputs; only the work is done elsewhere.
//! HChaCha20 is RustCrypto's `chacha20::hchacha`; the AEAD is ring's (the assembly that also
//! runs the TLS records). The reason is speed on the server's hot path: measured here, the
//! RustCrypto AEAD's AVX2 backends call their intrinsics out of line under this compiler
//! (`core::core_arch::x86::avx2::*` appear as functions in the profile), and sealing a 1 KiB
//! envelope cost 3.2 µs against 1.1 µs this way (2.5 µs against 0.46 µs for a 64-byte
//! record), a tenth of the server's CPU at saturation. The client SDK, which also builds for
//! WebAssembly, keeps the RustCrypto AEAD.

use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::{Zeroize, Zeroizing};

/// Bytes of an XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// The sealing key for this nonce: HChaCha20's subkey under ring's ChaCha20-Poly1305, and the
/// 96-bit nonce that goes with it.
fn subkey(key: &[u8; 32], nonce: &[u8; NONCE_LEN]) -> Option<(LessSafeKey, Nonce)> {
    let (head, tail) = nonce.split_first_chunk::<16>()?;
    let mut derived = chacha20::hchacha::<U10>(key.into(), head.into());
    let subkey: Zeroizing<[u8; 32]> = Zeroizing::new(derived.into());
    derived.as_mut_slice().zeroize();
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice()).ok()?;
    let mut short = [0u8; 12];
    short.get_mut(4..)?.copy_from_slice(tail);
    Some((
        LessSafeKey::new(unbound),
        Nonce::assume_unique_for_key(short),
    ))
}

/// Encrypts `in_out` in place and returns the tag. `None` only if ring refuses the key, which
/// a 32-byte key never makes it do.
pub fn seal_in_place(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Option<[u8; TAG_LEN]> {
    let (key, nonce) = subkey(key, nonce)?;
    let tag: Tag = key
        .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
        .ok()?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    Some(out)
}

/// Authenticates and decrypts `sealed` (ciphertext followed by its tag); `None` if it does not
/// authenticate. The plaintext is wiped when dropped.
pub fn open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let (key, nonce) = subkey(key, nonce)?;
    let mut buffer = Zeroizing::new(sealed.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), buffer.as_mut_slice())
        .ok()?
        .len();
    buffer.truncate(plain_len);
    Some(buffer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use rand::{Rng, RngCore, SeedableRng};

    fn hex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    /// draft-irtf-cfrg-xchacha-03, Appendix A.3.1.
    #[test]
    fn the_drafts_vector() {
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip \
                      for the future, sunscreen would be it.";
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let key: [u8; 32] = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap();
        let nonce: [u8; 24] = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let expected = hex(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3\
             a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc\
             369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e",
        );
        let tag = hex("c0875924c1c7987947deafd8780acf49");
        let mut buffer = plain.to_vec();
        let sealed_tag = seal_in_place(&key, &nonce, &aad, &mut buffer).unwrap();
        assert_eq!(buffer, expected);
        assert_eq!(sealed_tag.to_vec(), tag);
        buffer.extend_from_slice(&sealed_tag);
        assert_eq!(open(&key, &nonce, &aad, &buffer).unwrap().as_slice(), plain);
    }

    /// Byte for byte what the RustCrypto AEAD makes, and each opens the other's.
    #[test]
    fn the_same_bytes_as_the_rustcrypto_aead_on_random_inputs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..500 {
            let mut key = [0u8; 32];
            let mut nonce = [0u8; 24];
            rng.fill_bytes(&mut key);
            rng.fill_bytes(&mut nonce);
            let len = match round {
                0 => 0,
                1 => 1,
                2 => 64 * 1024 + 3,
                _ => rng.gen_range(0..2048),
            };
            let mut plain = vec![0u8; len];
            rng.fill_bytes(&mut plain);
            let mut aad = vec![0u8; rng.gen_range(0..80)];
            rng.fill_bytes(&mut aad);

            let reference = XChaCha20Poly1305::new((&key).into())
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &plain,
                        aad: &aad,
                    },
                )
                .unwrap();
            let mut ours = plain.clone();
            let tag = seal_in_place(&key, &nonce, &aad, &mut ours).unwrap();
            ours.extend_from_slice(&tag);
            assert_eq!(ours, reference, "round {round}");
            assert_eq!(
                open(&key, &nonce, &aad, &reference).unwrap().as_slice(),
                plain
            );
        }
    }

    #[test]
    fn any_change_is_refused() {
        let key = [9u8; 32];
        let nonce = [3u8; 24];
        let mut sealed = b"an envelope".to_vec();
        let tag = seal_in_place(&key, &nonce, b"row", &mut sealed).unwrap();
        sealed.extend_from_slice(&tag);
        for bit in 0..sealed.len() * 8 {
            let mut changed = sealed.clone();
            changed[bit / 8] ^= 1 << (bit % 8);
            assert!(open(&key, &nonce, b"row", &changed).is_none(), "bit {bit}");
        }
        assert!(open(&key, &nonce, b"another row", &sealed).is_none());
        let mut other_nonce = nonce;
        other_nonce[23] ^= 1;
        assert!(open(&key, &other_nonce, b"row", &sealed).is_none());
        assert!(open(&key, &nonce, b"row", &sealed[..TAG_LEN - 1]).is_none());
    }
}
