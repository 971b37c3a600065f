//! 16-byte addresses: IPv6 as is, IPv4 as IPv4-mapped IPv6.
#![expect(
    clippy::inline_always,
    reason = "called from BPF programs, where an out-of-line call costs verifier state"
)]

/// The prefix of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Maps an IPv4 address in network byte order (as the kernel stores it in a
/// `u32`, read natively) to its 16-byte form.
#[inline(always)]
#[must_use]
pub const fn from_v4_be(ip_be: u32) -> [u8; 16] {
    let b = ip_be.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

/// Whether a 16-byte address is IPv4-mapped.
#[inline(always)]
#[must_use]
pub const fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

/// The IPv4 part of an IPv4-mapped address, as a native `u32` holding the
/// address in network byte order (the form `user_ip4` uses).
#[inline(always)]
#[must_use]
pub const fn v4_be(addr: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]])
}

/// The four native `u32` words of an address (the form `user_ip6` uses).
#[inline(always)]
#[must_use]
pub const fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// The inverse of [`words`].
#[inline(always)]
#[must_use]
pub const fn from_words(w: [u32; 4]) -> [u8; 16] {
    let w0 = w[0].to_ne_bytes();
    let w1 = w[1].to_ne_bytes();
    let w2 = w[2].to_ne_bytes();
    let w3 = w[3].to_ne_bytes();
    [
        w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0],
        w3[1], w3[2], w3[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::{from_v4_be, from_words, is_v4_mapped, v4_be, words};

    #[test]
    fn v4_round_trip() {
        let be = u32::from_ne_bytes([10, 96, 0, 100]);
        let a = from_v4_be(be);
        assert!(is_v4_mapped(&a));
        assert_eq!(&a[12..], &[10, 96, 0, 100]);
        assert_eq!(v4_be(&a), be);
        assert_eq!(from_words(words(&a)), a);
    }

    #[test]
    fn v6_is_not_mapped() {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        assert!(!is_v4_mapped(&a));
    }
}
