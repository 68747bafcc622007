//! Bounds-checked reading and little-endian writing of binary formats.
//!
//! Parsers take bytes from a [`Reader`], which never panics: running out of
//! input is [`CorruptKind::Truncated`].

use crate::error::CorruptKind;

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptKind> {
        let end = self.pos.checked_add(n).ok_or(CorruptKind::Truncated)?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(CorruptKind::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptKind> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CorruptKind> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CorruptKind> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CorruptKind> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, CorruptKind> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Requires that every byte has been read.
    pub(crate) fn finish(&self) -> Result<(), CorruptKind> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(CorruptKind::TrailingBytes)
        }
    }
}
