//! Redis Cluster hash slots: which of the 16,384 slots a key or a shard channel belongs to.
//!
//! The slot of a name is `CRC16(part) mod 16384`, where `CRC16` is CRC-16/XMODEM (polynomial
//! `0x1021`, initial value 0) and `part` is the name's hash tag when it has one (the bytes
//! between its first `{` and the first `}` after it, when there are any) or else the whole name.
//! Names with the same tag share a slot, which is how a channel's history keys are kept on the
//! node that publishes the channel.

/// Slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::cast_possible_truncation)] // i < 256
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16: [u16; 256] = crc16_table();

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The part of `name` that decides its slot: its hash tag, or the whole name.
pub(crate) fn hashed_part(name: &[u8]) -> &[u8] {
    if let Some(open) = name.iter().position(|&b| b == b'{')
        && let Some(len) = name[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &name[open + 1..open + 1 + len];
    }
    name
}

/// The slot of `name`, a key or a shard channel.
pub(crate) fn slot(name: &[u8]) -> u16 {
    crc16(hashed_part(name)) & (SLOTS as u16 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_xmodem() {
        // The check value of CRC-16/XMODEM, and the example of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"123456789"), 0x31c3 & 0x3fff);
    }

    #[test]
    fn slots_as_redis_computes_them() {
        // `CLUSTER KEYSLOT` of Redis 7.0.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b""), 0);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(hashed_part(b"{user1000}.following"), b"user1000");
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"sc:hist:{foo}"), slot(b"foo"));
        // Only the first `{`, and an empty tag means the whole name.
        assert_eq!(hashed_part(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hashed_part(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hashed_part(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hashed_part(b"no}tag{"), b"no}tag{");
    }
}
