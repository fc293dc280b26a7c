//! A seeded input generator for the fuzz tests of every parser that reads
//! what a client or a peer SFT sends (`docs/security.md`): stable Rust, no
//! extra dependency, reproducible from the seed in a failure message.
//!
//! Inputs are valid samples mutated (bytes flipped, cut, repeated, spliced
//! with another sample, numbers swapped for extreme ones) and plain random
//! bytes. `cargo test` runs [`inputs`] (10,000) per target; set
//! `FUZZ_INPUTS=1000000` for the long run documented in `docs/security.md`.

/// How many inputs each target gets.
pub fn inputs() -> usize {
    std::env::var("FUZZ_INPUTS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000)
}

/// xorshift64*: small, fast and good enough to explore input shapes.
pub struct Fuzzer {
    state: u64,
}

/// Numbers that break careless arithmetic, put where digits were.
const EXTREMES: [&str; 8] =
    ["0", "-1", "4294967295", "4294967296", "18446744073709551615", "18446744073709551616", "1e308", "-0"];

impl Fuzzer {
    pub fn new(seed: u64) -> Self {
        Self { state: seed.max(1) }
    }

    pub fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `bound` (at least 1).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    /// One input: a mutated sample most of the time, random bytes else.
    pub fn input(&mut self, samples: &[&[u8]]) -> Vec<u8> {
        if samples.is_empty() || self.below(8) == 0 {
            let len = self.below(256);
            return (0..len).map(|_| self.next() as u8).collect();
        }
        let mut bytes = samples[self.below(samples.len())].to_vec();
        for _ in 0..=self.below(4) {
            self.mutate(&mut bytes, samples);
        }
        bytes
    }

    fn mutate(&mut self, bytes: &mut Vec<u8>, samples: &[&[u8]]) {
        let len = bytes.len();
        match self.below(7) {
            0 if len > 0 => {
                let at = self.below(len);
                bytes[at] = self.next() as u8;
            }
            1 => bytes.truncate(self.below(len + 1)),
            2 if len > 0 => {
                let (from, to) = self.range(len);
                let copy = bytes[from..to].to_vec();
                let at = self.below(len + 1);
                bytes.splice(at..at, copy);
            }
            3 if len > 0 => {
                let (from, to) = self.range(len);
                bytes.drain(from..to);
            }
            4 => {
                let other = samples[self.below(samples.len())];
                let cut = self.below(len + 1);
                let from = self.below(other.len() + 1);
                bytes.truncate(cut);
                bytes.extend_from_slice(&other[from..]);
            }
            5 => {
                // A run of digits becomes an extreme number.
                if let Some(start) = (0..len).map(|i| (i + self.below(len)) % len).find(|&i| bytes[i].is_ascii_digit())
                {
                    let end = (start..len).find(|&i| !bytes[i].is_ascii_digit()).unwrap_or(len);
                    let extreme = EXTREMES[self.below(EXTREMES.len())].as_bytes();
                    bytes.splice(start..end, extreme.iter().copied());
                }
            }
            _ => {
                let at = self.below(len + 1);
                let byte = [b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'\r', b'\n', 0, 0xff][self.below(12)];
                bytes.insert(at, byte);
            }
        }
    }

    fn range(&mut self, len: usize) -> (usize, usize) {
        let from = self.below(len);
        (from, from + self.below(len - from) + 1)
    }
}

/// Runs `target` on [`inputs`] inputs made from `samples` with `seed`.
/// A panic inside names the round, so a failure can be replayed.
pub fn run(seed: u64, samples: &[&[u8]], mut target: impl FnMut(&[u8])) {
    let mut fuzzer = Fuzzer::new(seed);
    for round in 0..inputs() {
        let input = fuzzer.input(samples);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        if outcome.is_err() {
            panic!("seed {seed}, round {round}: input {:?}", String::from_utf8_lossy(&input));
        }
    }
}
