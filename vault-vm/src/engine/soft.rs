//! The portable backend: mode logic over the `aes` crate's block ciphers. Constant time
//! (fixslice) on CPUs without AES-NI; the `aes` crate uses AES-NI itself where present.

use aes::cipher::consts::U16;
use aes::cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser};
use aes::Block;
use zeroize::Zeroize;

use super::keys::{AesKey, SoftAes};
use super::{Job, Mode};

/// Multiplies an XTS tweak by α in GF(2^128) (little-endian convention), constant time.
#[inline(always)]
pub(crate) fn gf_double(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

fn soft(k: &AesKey) -> &SoftAes {
    match k {
        AesKey::Soft(s) => s,
        AesKey::Hw(_) => unreachable!("software backend with hardware keys"),
    }
}

/// Runs a job on the software backend.
pub(crate) fn run(job: &Job<'_>, buf: &mut [u8]) {
    match soft(job.data) {
        SoftAes::A128(c) => run_with(c, job, buf),
        SoftAes::A192(c) => run_with(c, job, buf),
        SoftAes::A256(c) => run_with(c, job, buf),
    }
}

/// Encrypts one block with an aux key (tweak or ESSIV).
fn aux_encrypt(k: &AesKey, block: &mut [u8; 16]) {
    let b = Block::from_mut_slice(block);
    match soft(k) {
        SoftAes::A128(c) => c.encrypt_block(b),
        SoftAes::A192(c) => c.encrypt_block(b),
        SoftAes::A256(c) => c.encrypt_block(b),
    }
}

fn run_with<C: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>>(
    c: &C,
    job: &Job<'_>,
    buf: &mut [u8],
) {
    let mut tmp = [Block::default(); 8];
    for (i, sec) in buf.chunks_exact_mut(job.ss).enumerate() {
        let mut iv = job.iv.block(i);
        // The aux key is the XTS tweak key or the ESSIV key; plain IVs are used as they are.
        if let Some(aux) = job.aux {
            aux_encrypt(aux, &mut iv);
        }
        match job.spec.mode {
            Mode::Xts => {
                let mut t = u128::from_le_bytes(iv);
                for chunk in sec.chunks_exact_mut(128) {
                    let mut ts = [0u128; 8];
                    for (j, b) in tmp.iter_mut().enumerate() {
                        ts[j] = t;
                        let x =
                            u128::from_le_bytes(chunk[16 * j..16 * j + 16].try_into().unwrap()) ^ t;
                        b.copy_from_slice(&x.to_le_bytes());
                        t = gf_double(t);
                    }
                    if job.enc {
                        c.encrypt_blocks(&mut tmp);
                    } else {
                        c.decrypt_blocks(&mut tmp);
                    }
                    for (j, b) in tmp.iter().enumerate() {
                        let x = u128::from_le_bytes((*b).into()) ^ ts[j];
                        chunk[16 * j..16 * j + 16].copy_from_slice(&x.to_le_bytes());
                    }
                }
            }
            Mode::Cbc if job.enc => {
                let mut prev = Block::from(iv);
                for blk in sec.chunks_exact_mut(16) {
                    for (p, x) in prev.iter_mut().zip(blk.iter()) {
                        *p ^= x;
                    }
                    c.encrypt_block(&mut prev);
                    blk.copy_from_slice(&prev);
                }
            }
            Mode::Cbc => {
                let mut prev = iv;
                for chunk in sec.chunks_exact_mut(128) {
                    for (j, b) in tmp.iter_mut().enumerate() {
                        b.copy_from_slice(&chunk[16 * j..16 * j + 16]);
                    }
                    c.decrypt_blocks(&mut tmp);
                    for j in 0..8 {
                        let blk = &mut chunk[16 * j..16 * j + 16];
                        let mut next = [0u8; 16];
                        next.copy_from_slice(blk);
                        for k in 0..16 {
                            blk[k] = tmp[j][k] ^ prev[k];
                        }
                        prev = next;
                    }
                }
            }
            Mode::Ecb => {
                for chunk in sec.chunks_exact_mut(128) {
                    for (j, b) in tmp.iter_mut().enumerate() {
                        b.copy_from_slice(&chunk[16 * j..16 * j + 16]);
                    }
                    if job.enc {
                        c.encrypt_blocks(&mut tmp);
                    } else {
                        c.decrypt_blocks(&mut tmp);
                    }
                    for (j, b) in tmp.iter().enumerate() {
                        chunk[16 * j..16 * j + 16].copy_from_slice(b);
                    }
                }
            }
        }
    }
    for b in tmp.iter_mut() {
        b.as_mut_slice().zeroize();
    }
}
