//! The HyperLogLog sketch of a day's visitors and its stored bytes. Apart from the
//! rest of the aggregates because its byte format outlives releases: what it reads
//! and writes must not change with the tables around it.

/// 2^14 registers: a standard error of 1.04 / sqrt(16384) = 0.81%, 16 KiB per busy day.
pub(crate) const SKETCH_PRECISION: u8 = 14;
const REGISTERS: usize = 1 << SKETCH_PRECISION;

/// The stable 64-bit hash of a visitor id for the sketches: the first 8 bytes of
/// SHA-256 of its text. Stored registers outlive processes and Rust releases, so
/// neither a seeded nor a std hasher (whose algorithm may change) will do.
pub(crate) fn visitor_hash(visitor: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(visitor.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

type Hll = hyperloglockless::HyperLogLog<std::hash::BuildHasherDefault<std::hash::DefaultHasher>>;

/// Unique visitors as HyperLogLog registers (hyperloglockless, precision 14), stored
/// as bytes: `[1, p, registers…]` dense, or `[2, p, (index u16 BE, value u8)…]` for
/// the nonzero registers while they are few (a quiet day is a few bytes).
pub(crate) struct Sketch(Hll);

impl Sketch {
    pub fn new() -> Self {
        Self(Hll::with_hasher(SKETCH_PRECISION, Default::default()))
    }

    pub fn insert_hash(&mut self, hash: u64) {
        self.0.insert_hash(hash);
    }

    pub fn union(&mut self, other: &Sketch) {
        // Same precision by construction (`from_bytes` refuses others).
        let _ = self.0.union(&other.0);
    }

    pub fn estimate(&self) -> u64 {
        self.0.count() as u64
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let (registers, _, zeros, _) = self.0.parts();
        let nonzero = registers.len() - zeros;
        if nonzero * 3 < registers.len() {
            let mut out = Vec::with_capacity(2 + nonzero * 3);
            out.extend_from_slice(&[2, SKETCH_PRECISION]);
            for (i, &r) in registers.iter().enumerate() {
                if r != 0 {
                    out.extend_from_slice(&(i as u16).to_be_bytes());
                    out.push(r);
                }
            }
            out
        } else {
            let mut out = Vec::with_capacity(2 + registers.len());
            out.extend_from_slice(&[1, SKETCH_PRECISION]);
            out.extend_from_slice(registers);
            out
        }
    }

    /// `None` for bytes that are not a sketch of this precision.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&[format, precision], rest) = bytes.split_first_chunk::<2>()?;
        if precision != SKETCH_PRECISION {
            return None;
        }
        let mut registers = vec![0u8; REGISTERS];
        match format {
            1 if rest.len() == REGISTERS => registers.copy_from_slice(rest),
            2 if rest.len() % 3 == 0 => {
                for entry in rest.chunks_exact(3) {
                    let i = usize::from(u16::from_be_bytes([entry[0], entry[1]]));
                    *registers.get_mut(i)? = entry[2];
                }
            }
            _ => return None,
        }
        if registers.iter().any(|&r| r > 65) {
            return None;
        }
        let zeros = registers.iter().filter(|&&r| r == 0).count();
        let sum: f64 = registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
        Some(Self(Hll::from_parts(
            registers.into_boxed_slice(),
            Default::default(),
            zeros,
            sum,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketches_round_trip_dense_and_sparse_and_merge() {
        let mut a = Sketch::new();
        for i in 0..100 {
            a.insert_hash(visitor_hash(&format!("v{i}")));
        }
        let bytes = a.to_bytes();
        assert_eq!(bytes[0], 2, "few registers: sparse");
        assert!(bytes.len() <= 2 + 3 * 100);
        let back = Sketch::from_bytes(&bytes).unwrap();
        assert_eq!(back.estimate(), a.estimate());
        assert_eq!(a.estimate(), 100);

        let mut big = Sketch::new();
        for i in 0..50_000 {
            big.insert_hash(visitor_hash(&format!("w{i}")));
        }
        let bytes = big.to_bytes();
        assert_eq!((bytes[0], bytes.len()), (1, 2 + REGISTERS));
        let back = Sketch::from_bytes(&bytes).unwrap();
        assert_eq!(back.estimate(), big.estimate());
        let e = big.estimate() as f64;
        assert!((e - 50_000.0).abs() / 50_000.0 < 0.03, "{e}");

        let mut union = Sketch::from_bytes(&a.to_bytes()).unwrap();
        union.union(&back);
        union.union(&back);
        let u = union.estimate() as f64;
        assert!((u - 50_100.0).abs() / 50_100.0 < 0.03, "{u}");
        assert!(Sketch::from_bytes(&[1, 12, 0]).is_none());
        assert!(Sketch::from_bytes(&[2, 14, 0xff, 0xff, 1]).is_none());
        assert!(Sketch::from_bytes(&[]).is_none());
    }
}
