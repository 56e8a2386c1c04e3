//! Requests in flight: [`Vault::encrypt_async`] and [`Vault::decrypt_async`] return a
//! [`Pending`] at once; the vault works while the caller prepares the next request.

use std::marker::PhantomData;

use vault_vm::abi::op;
use vault_vm::engine::Geometry;

use crate::backend::Ticket;
use crate::error::Result;
use crate::keys::SlotId;
use crate::window::WindowBuf;
use crate::Vault;

impl Vault {
    /// Starts encrypting `buf` in place and returns at once: the vault works while the
    /// caller prepares the next request (several in flight keep a vCPU busy without a
    /// round trip between them). [`Pending::wait`] gives the result.
    ///
    /// # Safety
    /// The returned [`Pending`] must be waited for or dropped, never leaked
    /// (`mem::forget`): that would end the borrow of `buf` while the vault still writes it.
    pub unsafe fn encrypt_async<'a>(
        &'a self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &'a mut WindowBuf,
    ) -> Result<Pending<'a>> {
        self.crypt_async(op::ENCRYPT, slot, geom, sector, buf)
    }

    /// Starts decrypting `buf` in place; see [`Vault::encrypt_async`].
    ///
    /// # Safety
    /// As for [`Vault::encrypt_async`].
    pub unsafe fn decrypt_async<'a>(
        &'a self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &'a mut WindowBuf,
    ) -> Result<Pending<'a>> {
        self.crypt_async(op::DECRYPT, slot, geom, sector, buf)
    }

    fn crypt_async<'a>(
        &'a self,
        opcode: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &'a mut WindowBuf,
    ) -> Result<Pending<'a>> {
        let seg = [self.buf_segment(buf)?];
        let mut req = Self::crypt_request(opcode, slot, geom, sector, &seg);
        let ticket = self.submit(&mut req)?;
        Ok(Pending {
            vault: self,
            ticket: Some(ticket),
            _buf: PhantomData,
        })
    }
}

/// A request in flight (from [`Vault::encrypt_async`] or [`Vault::decrypt_async`]); the
/// buffer stays borrowed until it completes. Dropping it waits too.
#[must_use = "a pending request must be waited for"]
pub struct Pending<'a> {
    vault: &'a Vault,
    ticket: Option<Ticket>,
    _buf: PhantomData<&'a mut WindowBuf>,
}

impl std::fmt::Debug for Pending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("vault", self.vault)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Pending<'_> {
    /// Waits for the request and returns its result.
    pub fn wait(mut self) -> Result<()> {
        match self.ticket.take() {
            Some(t) => self
                .vault
                .backend
                .complete(t)
                .and_then(Vault::check)
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            // The vault may still be writing the buffer: never give it back before.
            let _ = self.vault.backend.complete(t);
        }
    }
}
