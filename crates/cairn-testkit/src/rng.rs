//! A deterministic pseudo-random generator, so failures reproduce.

/// xorshift64*: fast, and the same sequence for the same seed on every machine.
pub struct Rng(u64);

impl Rng {
    /// The generator started from `seed` (0 counts as 1: the state must not be zero).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (not exactly uniform; good enough for tests).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Fills `buf` with random bytes, 8 from each number.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift, the top byte of each number):
/// incompressible, and no two blocks alike.
pub fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    xorshift_bytes_from(seed, len, 56)
}

/// As [`xorshift_bytes`], taking from each number the byte `shift` bits up.
pub fn xorshift_bytes_from(seed: u64, len: usize, shift: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> shift) as u8
        })
        .collect()
}
