//! Encryption and decryption requests: whole window buffers and scatter/gather lists of
//! window ranges, split into requests of at most [`MAX_SEGMENTS`] segments.

use std::sync::Arc;

use vault_vm::abi::{self, op, Request, Segment, MAX_SEGMENTS};
use vault_vm::engine::Geometry;

use crate::error::{HvError, Result};
use crate::keys::SlotId;
use crate::window::WindowBuf;
use crate::Vault;

impl Vault {
    /// The window range of `buf`, which must belong to this vault's window.
    pub(crate) fn buf_segment(&self, buf: &WindowBuf) -> Result<Segment> {
        if !Arc::ptr_eq(buf.window(), self.window()) {
            return Err(HvError::Config(
                "the buffer belongs to another vault's window".into(),
            ));
        }
        Ok(Segment {
            offset: buf.offset(),
            len: buf.len() as u64,
        })
    }

    /// Encrypts `buf` in place: whole sectors, `sector` in 512-byte units.
    pub fn encrypt(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &mut WindowBuf,
    ) -> Result<()> {
        self.crypt_buf(op::ENCRYPT, slot, geom, sector, buf)
    }

    /// Decrypts `buf` in place: whole sectors, `sector` in 512-byte units.
    pub fn decrypt(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &mut WindowBuf,
    ) -> Result<()> {
        self.crypt_buf(op::DECRYPT, slot, geom, sector, buf)
    }

    /// One ENCRYPT or DECRYPT request over a whole window buffer.
    fn crypt_buf(
        &self,
        op: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &mut WindowBuf,
    ) -> Result<()> {
        let seg = [self.buf_segment(buf)?];
        self.crypt(op, slot, geom, sector, &seg).map(|_| ())
    }

    /// Encrypts window ranges in place (scatter/gather: sectors are consecutive across
    /// segments). Returns the bytes processed.
    ///
    /// # Safety
    /// The vault writes these window ranges while the call runs: no live `WindowBuf`
    /// borrow (`&[u8]`/`&mut [u8]`) may overlap them.
    pub unsafe fn encrypt_segments(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Result<u64> {
        self.crypt(op::ENCRYPT, slot, geom, sector, segs)
    }

    /// Decrypts window ranges in place; see [`Vault::encrypt_segments`].
    ///
    /// # Safety
    /// As for [`Vault::encrypt_segments`].
    pub unsafe fn decrypt_segments(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Result<u64> {
        self.crypt(op::DECRYPT, slot, geom, sector, segs)
    }

    fn crypt(
        &self,
        opcode: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Result<u64> {
        let mut done = 0u64;
        let mut sector = sector;
        for chunk in segs.chunks(MAX_SEGMENTS) {
            let mut req = Self::crypt_request(opcode, slot, geom, sector, chunk);
            let resp = self.call(&mut req).and_then(Self::check)?;
            done += resp.bytes;
            sector += chunk.iter().map(|s| s.len / 512).sum::<u64>();
        }
        Ok(done)
    }

    /// An ENCRYPT/DECRYPT request for up to [`MAX_SEGMENTS`] segments.
    pub(crate) fn crypt_request(
        opcode: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Request {
        let mut req = Request {
            op: opcode,
            slot: slot.index,
            cipher: slot.cipher,
            generation: slot.generation,
            sector_size: geom.sector_size,
            flags: if geom.iv_large_sectors {
                abi::FLAG_IV_LARGE_SECTORS
            } else {
                0
            },
            nsegs: segs.len() as u32,
            sector,
            iv_offset: geom.iv_offset,
            ..Request::ZERO
        };
        req.segs[..segs.len()].copy_from_slice(segs);
        req
    }
}
