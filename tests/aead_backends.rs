//! The `ring` AEAD backend against the default RustCrypto one: same bytes on the wire, each
//! opens what the other sealed, and both reject tampered packets.
//!
//! Without the `ring` feature there is only one backend and a single test says so.

#[cfg(not(feature = "ring"))]
#[test]
fn ring_feature_is_off() {
    eprintln!("aead_backends: the `ring` feature is off; run with default features");
}

#[cfg(feature = "ring")]
mod with_ring {
    use tickwire::pipeline::seal::{MAX_AAD, TAG_LEN};
    use tickwire::pipeline::PacketKey;
    use tickwire::wire::ErrorCode;

    /// SplitMix64: a small seeded generator, so that failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn fill(&mut self, out: &mut [u8]) {
            for b in out {
                *b = self.next() as u8;
            }
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.fill(&mut v);
            v
        }
    }

    struct Case {
        key: PacketKey,
        pn: u32,
        aad: Vec<u8>,
        plain: Vec<u8>,
    }

    fn case(rng: &mut Rng) -> Case {
        let mut key = [0; 16];
        let mut salt = [0; 12];
        rng.fill(&mut key);
        rng.fill(&mut salt);
        // Edge packet numbers now and then, otherwise any.
        let pn = match rng.below(8) {
            0 => 0,
            1 => u32::MAX,
            _ => rng.next() as u32,
        };
        // Lengths 0..2000, with the short ones (under a block, around the tag) well covered.
        let len = if rng.below(4) == 0 {
            rng.below(40)
        } else {
            rng.below(2000)
        };
        let aad_len = rng.below(MAX_AAD + 1);
        Case {
            key: PacketKey::new(&key, &salt),
            pn,
            aad: rng.bytes(aad_len),
            plain: rng.bytes(len),
        }
    }

    const CASES: u64 = 3000;

    #[test]
    fn ring_and_rustcrypto_seal_the_same_bytes_and_open_each_other() {
        let mut rng = Rng(0x7469_636B_7769_7265);
        for i in 0..CASES {
            let Case {
                key,
                pn,
                aad,
                plain,
            } = case(&mut rng);
            let ctx = format!(
                "case {i}: pn {pn:#x}, aad {} B, plaintext {} B",
                aad.len(),
                plain.len()
            );

            let mut by_ring = Vec::with_capacity(plain.len() + TAG_LEN);
            by_ring.extend_from_slice(&plain);
            key.seal(pn, &aad, &mut by_ring);
            let mut by_rustcrypto = Vec::with_capacity(plain.len() + TAG_LEN);
            by_rustcrypto.extend_from_slice(&plain);
            key.seal_rustcrypto(pn, &aad, &mut by_rustcrypto);
            assert_eq!(by_ring, by_rustcrypto, "{ctx}: sealed bytes differ");
            assert_eq!(by_ring.len(), plain.len() + TAG_LEN, "{ctx}");

            // Each opens what the other sealed (they are the same bytes, but open each copy
            // with the other backend all the same).
            let mut a = by_ring.clone();
            let n = key.open_rustcrypto(pn, &aad, &mut a).expect(&ctx);
            assert_eq!(
                &a[..n],
                &plain[..],
                "{ctx}: RustCrypto opening ring's output"
            );
            let mut b = by_rustcrypto.clone();
            let n = key.open(pn, &aad, &mut b).expect(&ctx);
            assert_eq!(
                &b[..n],
                &plain[..],
                "{ctx}: ring opening RustCrypto's output"
            );

            // Tampering: one flipped bit in the ciphertext or tag, a different AAD, a
            // different packet number, a truncated packet: both backends refuse.
            let mut tampered = by_ring.clone();
            let at = rng.below(tampered.len());
            tampered[at] ^= 1 << rng.below(8);
            both_refuse(&key, pn, &aad, &tampered, &ctx, "flipped bit");

            let mut other_aad = aad.clone();
            if other_aad.is_empty() {
                other_aad.push(0);
            } else {
                let at = rng.below(other_aad.len());
                other_aad[at] ^= 0x80;
            }
            both_refuse(&key, pn, &other_aad, &by_ring, &ctx, "changed aad");

            both_refuse(&key, pn ^ 1, &aad, &by_ring, &ctx, "other packet number");

            let cut = rng.below(by_ring.len());
            both_refuse(&key, pn, &aad, &by_ring[..cut], &ctx, "truncated");
        }
    }

    fn both_refuse(key: &PacketKey, pn: u32, aad: &[u8], sealed: &[u8], ctx: &str, what: &str) {
        let mut a = sealed.to_vec();
        let ring = key.open(pn, aad, &mut a);
        let mut b = sealed.to_vec();
        let rustcrypto = key.open_rustcrypto(pn, aad, &mut b);
        let (Err(ring), Err(rustcrypto)) = (ring, rustcrypto) else {
            panic!("{ctx}: {what}: a backend opened a tampered packet");
        };
        assert_eq!(
            ring, rustcrypto,
            "{ctx}: {what}: the backends give different errors"
        );
        assert_eq!(ring.code, ErrorCode::InitVector, "{ctx}: {what}");
    }

    /// A sealed packet under one key does not open under another, with either backend.
    #[test]
    fn other_key_refuses() {
        let mut rng = Rng(42);
        for _ in 0..200 {
            let Case {
                key,
                pn,
                aad,
                plain,
            } = case(&mut rng);
            let Case { key: other, .. } = case(&mut rng);
            let mut sealed = plain.clone();
            key.seal(pn, &aad, &mut sealed);
            both_refuse(&other, pn, &aad, &sealed, "other key", "other key");
        }
    }

    /// Both backends against an outside value: the GCM specification's test case 3 (its IV as
    /// the salt, so that packet number 0 gives that IV as the nonce; no associated data).
    #[test]
    fn nist_gcm_test_case_3() {
        let key: [u8; 16] = hex("feffe9928665731c6d6a8f9467308308").try_into().unwrap();
        let iv: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let plain = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        );
        let want = hex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985\
             4d5c2af327cd64a62cf35abd2ba6fab4",
        );
        let key = PacketKey::new(&key, &iv);
        let mut a = plain.clone();
        key.seal(0, &[], &mut a);
        let mut b = plain.clone();
        key.seal_rustcrypto(0, &[], &mut b);
        assert_eq!(a, want);
        assert_eq!(b, want);
    }

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
}
