//! Little-endian fields of a request copied out of guest memory, and of a reply being
//! built: what the file system devices' protocols (FUSE, 9P) are made of. Every read is
//! bounds-checked and gives `None` past the end; no guest bytes are cast into structs.

/// Reads little-endian fields from a request body; a read past the end gives `None`.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    /// Fields of `bytes`, from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.at.checked_add(N)?;
        let b: [u8; N] = self.bytes.get(self.at..end)?.try_into().ok()?;
        self.at = end;
        Some(b)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    /// The next `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    /// The next `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    /// The next `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let b = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(b)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(|_| ())
    }

    /// What follows the fields read so far.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }
}

/// A reply body being built.
#[derive(Debug, Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends `bytes` as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_stop_at_the_end_and_out_appends_little_endian() {
        let mut f = Fields::new(&[1, 0, 0, 0, 2, 3, 4]);
        assert_eq!(f.u32(), Some(1));
        assert_eq!(f.u32(), None, "past the end");
        assert_eq!(f.u8(), Some(2));
        assert_eq!(f.bytes(3), None);
        assert_eq!(f.bytes(2), Some(&[3u8, 4][..]));
        assert_eq!(f.rest(), &[] as &[u8]);
        assert_eq!(f.skip(1), None);
        let mut out = Out::default();
        out.u8(1).u16(2).u32(3).u64(4).bytes(b"ab").zeros(1);
        assert_eq!(out.0.len(), 1 + 2 + 4 + 8 + 2 + 1);
        assert_eq!(&out.0[1..3], &[2, 0]);
    }
}
