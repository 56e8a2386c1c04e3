//! The guest address space: image checks and loading, page tables.

use vault_vm::abi::{self, ImageHeader, IMAGE_MAGIC};

use x86_64::structures::paging::PageTableFlags as F;

use crate::error::{HvError, Result};

/// A table entry pointing to the next level: present, writable, user (the leaf entries
/// decide what is really allowed).
const TABLE: F = F::PRESENT.union(F::WRITABLE).union(F::USER_ACCESSIBLE);
/// Read-only code and data of the image (accessed set, so the CPU never writes the
/// entry).
const CODE: F = F::PRESENT.union(F::USER_ACCESSIBLE).union(F::ACCESSED);
/// Read-write data (accessed and dirty set, so the CPU never writes the entry).
const DATA: F = F::PRESENT
    .union(F::WRITABLE)
    .union(F::USER_ACCESSIBLE)
    .union(F::ACCESSED)
    .union(F::DIRTY);
/// The doorbell: a writable 2 MiB page with no memory behind it.
const DOORBELL: F = TABLE.union(F::HUGE_PAGE);
/// A 2 MiB page of the data window.
const WINDOW: F = DATA.union(F::HUGE_PAGE);
/// A 2 MiB page of the Argon2 scratch range: read-write data, never executable (the
/// vCPUs run with EFER.NXE set).
const SCRATCH: F = DATA.union(F::HUGE_PAGE).union(F::NO_EXECUTE);

/// First PT page (maps guest RAM with 4 KiB pages).
const PT_GPA: u64 = 0x4000;
/// PD page of the first GiB.
const PD0_GPA: u64 = 0x3000;
/// PDPT.
const PDPT_GPA: u64 = 0x2000;
/// First PD page of the window (up to 64 pages: one per GiB of [`abi::WINDOW_MAX`]).
const WINDOW_PD_GPA: u64 = 0x8000;
/// First PD page of the Argon2 scratch range (one per GiB of
/// [`abi::keyslot::SCRATCH_MAX`]), after the window's.
const SCRATCH_PD_GPA: u64 = WINDOW_PD_GPA + (abi::WINDOW_MAX >> 30) * abi::PAGE_SIZE;

const _: () = assert!(
    SCRATCH_PD_GPA + (abi::keyslot::SCRATCH_MAX >> 30) * abi::PAGE_SIZE <= abi::PAGE_TABLES_END
);
// The scratch range lies in the first PML4 entry, like everything else.
const _: () = assert!(abi::keyslot::SCRATCH_GPA + abi::keyslot::SCRATCH_MAX <= 512 << 30);

/// Checks the image header and returns it.
pub fn parse_image(image: &[u8]) -> Result<ImageHeader> {
    if image.len() < size_of::<ImageHeader>() {
        return Err(HvError::BadImage("shorter than its header"));
    }
    let word = |i: usize| u64::from_le_bytes(image[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let h = ImageHeader {
        magic: word(0),
        entry: word(1),
        end: word(2),
        abi_version: word(3),
        text_end: word(4),
    };
    if h.magic != IMAGE_MAGIC {
        return Err(HvError::BadImage("bad magic"));
    }
    if h.abi_version != abi::ABI_VERSION {
        return Err(HvError::BadImage("built for another ABI version"));
    }
    let img_end = abi::IMAGE_GPA + image.len() as u64;
    if h.end > abi::IMAGE_GPA + abi::IMAGE_MAX
        || h.end < img_end
        || !h.end.is_multiple_of(abi::PAGE_SIZE)
    {
        return Err(HvError::BadImage("image end out of range"));
    }
    if h.text_end > h.end
        || !h.text_end.is_multiple_of(abi::PAGE_SIZE)
        || h.entry < abi::IMAGE_GPA
        || h.entry >= h.text_end
    {
        return Err(HvError::BadImage("entry or text end out of range"));
    }
    Ok(h)
}

/// Writes the page-table entry at `gpa`: physical address `addr` with `flags`.
fn put(mem: &mut [u8], gpa: u64, addr: u64, flags: F) {
    let i = gpa as usize;
    mem[i..i + 8].copy_from_slice(&(addr | flags.bits()).to_le_bytes());
}

/// Loads the image and writes the page tables into guest RAM (`mem` is the whole
/// `GUEST_RAM_SIZE` memslot, zeroed).
///
/// Mapped (all with U/S=1): image code and read-only data read-only, image data and
/// `.bss` read-write, the stacks of the first `vcpus` vCPUs (guard page below each),
/// the transfer page, the rings of the first `vcpus` vCPUs, the doorbell (a 2 MiB page
/// without memslot) and the data window (2 MiB pages). Everything else, the page
/// tables included, is not mapped. The Argon2 scratch range
/// (`abi::keyslot::SCRATCH_GPA`, [`abi::keyslot::SCRATCH_MAX`] bytes) is always mapped
/// with 2 MiB read-write, non-executable pages; a memslot is behind it only while a
/// keyslot request runs.
pub fn build(
    mem: &mut [u8],
    image: &[u8],
    h: &ImageHeader,
    vcpus: usize,
    window_len: u64,
) -> Result<()> {
    assert_eq!(mem.len() as u64, abi::GUEST_RAM_SIZE);
    if window_len == 0
        || window_len > abi::WINDOW_MAX
        || !window_len.is_multiple_of(abi::WINDOW_ALIGN)
    {
        return Err(HvError::Config(format!(
            "window size {window_len} out of range"
        )));
    }
    let base = abi::IMAGE_GPA as usize;
    mem[base..base + image.len()].copy_from_slice(image);

    put(mem, abi::PAGE_TABLES_GPA, PDPT_GPA, TABLE);
    put(mem, PDPT_GPA, PD0_GPA, TABLE);
    let pt_pages = abi::GUEST_RAM_SIZE / (512 * abi::PAGE_SIZE);
    for i in 0..pt_pages {
        put(mem, PD0_GPA + i * 8, PT_GPA + i * abi::PAGE_SIZE, TABLE);
    }
    let in_rings = |gpa: u64| {
        (0..vcpus).any(|i| gpa >= abi::ring_gpa(i) && gpa < abi::ring_gpa(i) + abi::RING_STRIDE)
    };
    let in_stacks =
        |gpa: u64| (0..vcpus).any(|i| gpa >= abi::stack_bottom(i) && gpa < abi::stack_top(i));
    for page in 0..abi::GUEST_RAM_SIZE / abi::PAGE_SIZE {
        let gpa = page * abi::PAGE_SIZE;
        let flags = if gpa >= abi::IMAGE_GPA && gpa < h.text_end {
            CODE
        } else if (gpa >= h.text_end && gpa < h.end)
            || in_stacks(gpa)
            || (abi::TRANSFER_GPA..abi::TRANSFER_GPA + abi::TRANSFER_SIZE).contains(&gpa)
            || in_rings(gpa)
        {
            DATA
        } else {
            F::empty()
        };
        if !flags.is_empty() {
            put(mem, PT_GPA + page * 8, gpa, flags);
        }
    }
    // Doorbell: mapped, but no memslot behind it, so a write exits to the host.
    put(
        mem,
        PD0_GPA + (abi::DOORBELL_GPA >> 21) * 8,
        abi::DOORBELL_GPA,
        DOORBELL,
    );
    // Window: PDPT entries from 4 GiB, 2 MiB pages.
    let pages_2m = window_len / abi::WINDOW_ALIGN;
    for j in 0..pages_2m.div_ceil(512) {
        let pd = WINDOW_PD_GPA + j * abi::PAGE_SIZE;
        assert!(pd < abi::PAGE_TABLES_END);
        put(mem, PDPT_GPA + ((abi::WINDOW_GPA >> 30) + j) * 8, pd, TABLE);
        for k in 0..(pages_2m - j * 512).min(512) {
            let gpa = abi::WINDOW_GPA + (j * 512 + k) * abi::WINDOW_ALIGN;
            put(mem, pd + k * 8, gpa, WINDOW);
        }
    }
    // Argon2 scratch: PDPT entries from SCRATCH_GPA, 2 MiB pages over SCRATCH_MAX.
    let scratch_2m = abi::keyslot::SCRATCH_MAX / abi::WINDOW_ALIGN;
    for j in 0..scratch_2m.div_ceil(512) {
        let pd = SCRATCH_PD_GPA + j * abi::PAGE_SIZE;
        put(
            mem,
            PDPT_GPA + ((abi::keyslot::SCRATCH_GPA >> 30) + j) * 8,
            pd,
            TABLE,
        );
        for k in 0..(scratch_2m - j * 512).min(512) {
            let gpa = abi::keyslot::SCRATCH_GPA + (j * 512 + k) * abi::WINDOW_ALIGN;
            put(mem, pd + k * 8, gpa, SCRATCH);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the 4-level tables like the MMU: `Some((writable, user))` if mapped.
    fn walk(mem: &[u8], va: u64) -> Option<(bool, bool)> {
        walk_nx(mem, va).map(|(w, u, _)| (w, u))
    }

    /// Like [`walk`], with whether the page is non-executable (NX at any level).
    fn walk_nx(mem: &[u8], va: u64) -> Option<(bool, bool, bool)> {
        let get =
            |gpa: u64| u64::from_le_bytes(mem[gpa as usize..gpa as usize + 8].try_into().unwrap());
        let mut table = abi::PAGE_TABLES_GPA;
        let (mut w, mut u, mut nx) = (true, true, false);
        for level in (0..4).rev() {
            let idx = (va >> (12 + 9 * level)) & 511;
            let e = get(table + idx * 8);
            let flags = F::from_bits_retain(e);
            if !flags.contains(F::PRESENT) {
                return None;
            }
            w &= flags.contains(F::WRITABLE);
            u &= flags.contains(F::USER_ACCESSIBLE);
            nx |= flags.contains(F::NO_EXECUTE);
            if level == 0 || flags.contains(F::HUGE_PAGE) {
                return Some((w, u, nx));
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        unreachable!()
    }

    #[test]
    fn page_tables_map_exactly_what_they_should() {
        let mut mem = vec![0u8; abi::GUEST_RAM_SIZE as usize];
        let mut image = vec![0u8; 0x3000];
        let h = ImageHeader {
            magic: IMAGE_MAGIC,
            entry: abi::IMAGE_GPA + 0x1000,
            end: abi::IMAGE_GPA + 0x5000,
            abi_version: abi::ABI_VERSION,
            text_end: abi::IMAGE_GPA + 0x2000,
        };
        for (i, v) in [h.magic, h.entry, h.end, h.abi_version, h.text_end]
            .iter()
            .enumerate()
        {
            image[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let parsed = parse_image(&image).unwrap();
        let window = 6 << 20;
        build(&mut mem, &image, &parsed, 2, window).unwrap();
        let ro = Some((false, true));
        let rw = Some((true, true));
        assert_eq!(walk(&mem, 0), None);
        assert_eq!(
            walk(&mem, abi::PAGE_TABLES_GPA),
            None,
            "page tables must not be mapped"
        );
        assert_eq!(walk(&mem, abi::IMAGE_GPA), ro);
        assert_eq!(walk(&mem, abi::IMAGE_GPA + 0x1fff), ro);
        assert_eq!(walk(&mem, abi::IMAGE_GPA + 0x2000), rw);
        assert_eq!(walk(&mem, abi::IMAGE_GPA + 0x4fff), rw);
        assert_eq!(walk(&mem, abi::IMAGE_GPA + 0x5000), None);
        for i in 0..2 {
            assert_eq!(
                walk(&mem, abi::stack_bottom(i) - 1),
                None,
                "guard page of vCPU {i}"
            );
            assert_eq!(walk(&mem, abi::stack_bottom(i)), rw);
            assert_eq!(walk(&mem, abi::stack_top(i) - 8), rw);
            assert_eq!(walk(&mem, abi::ring_gpa(i)), rw);
            assert_eq!(walk(&mem, abi::ring_gpa(i) + abi::RING_STRIDE - 1), rw);
        }
        assert_eq!(
            walk(&mem, abi::stack_bottom(2)),
            None,
            "stack of an absent vCPU"
        );
        assert_eq!(walk(&mem, abi::ring_gpa(2)), None, "ring of an absent vCPU");
        assert_eq!(walk(&mem, abi::TRANSFER_GPA), rw);
        assert_eq!(walk(&mem, abi::TRANSFER_GPA + abi::TRANSFER_SIZE), None);
        assert_eq!(walk(&mem, abi::DOORBELL_GPA), rw);
        assert_eq!(walk(&mem, abi::WINDOW_GPA), rw);
        assert_eq!(walk(&mem, abi::WINDOW_GPA + window - 1), rw);
        assert_eq!(walk(&mem, abi::WINDOW_GPA + window), None);
        let (sgpa, smax) = (abi::keyslot::SCRATCH_GPA, abi::keyslot::SCRATCH_MAX);
        let rw_nx = Some((true, true, true));
        assert_eq!(walk_nx(&mem, sgpa - 1), None, "below the scratch range");
        for va in [
            sgpa,
            sgpa + abi::WINDOW_ALIGN - 1,
            sgpa + abi::WINDOW_ALIGN,
            sgpa + (1 << 30),
            sgpa + smax / 2 + 12345,
            sgpa + smax - 1,
        ] {
            assert_eq!(walk_nx(&mem, va), rw_nx, "scratch address {va:#x}");
        }
        assert_eq!(walk_nx(&mem, sgpa + smax), None, "above the scratch range");
        // Nothing else is non-executable: the window and the image are as before.
        assert_eq!(walk_nx(&mem, abi::WINDOW_GPA), Some((true, true, false)));
        assert_eq!(walk_nx(&mem, abi::IMAGE_GPA), Some((false, true, false)));
        // The scratch PDs are 2 MiB leaf entries pointing at themselves.
        for page in [0u64, 1, 511, 512, 2047] {
            let va = sgpa + page * abi::WINDOW_ALIGN;
            let pd = SCRATCH_PD_GPA + page * 8;
            let e = u64::from_le_bytes(mem[pd as usize..pd as usize + 8].try_into().unwrap());
            assert_eq!(e & 0x000f_ffff_ffe0_0000, va);
            assert_eq!(F::from_bits_retain(e & !0x000f_ffff_ffe0_0000), SCRATCH);
        }
        assert_eq!(
            &mem[abi::IMAGE_GPA as usize..abi::IMAGE_GPA as usize + 8],
            &IMAGE_MAGIC.to_le_bytes()
        );
    }

    /// The typed flag words are bit for bit the hand-written ones they replaced.
    #[test]
    fn flag_words_equal_the_old_constants() {
        const P: u64 = 1;
        const RW: u64 = 2;
        const US: u64 = 4;
        const ACCESSED: u64 = 0x20;
        const DIRTY: u64 = 0x40;
        const PS: u64 = 0x80;
        assert_eq!(TABLE.bits(), P | RW | US);
        assert_eq!(CODE.bits(), P | US | ACCESSED);
        assert_eq!(DATA.bits(), P | RW | US | ACCESSED | DIRTY);
        assert_eq!(DOORBELL.bits(), P | RW | US | PS);
        assert_eq!(WINDOW.bits(), P | RW | US | ACCESSED | DIRTY | PS);
        assert_eq!(SCRATCH.bits(), WINDOW.bits() | (1 << 63));
        assert_eq!(
            (
                TABLE.bits(),
                CODE.bits(),
                DATA.bits(),
                DOORBELL.bits(),
                WINDOW.bits()
            ),
            (0x7, 0x25, 0x67, 0x87, 0xe7)
        );
    }

    #[test]
    fn rejects_bad_images() {
        assert!(parse_image(&[0u8; 8]).is_err());
        assert!(parse_image(&[0u8; 64]).is_err());
        assert!(parse_image(crate::GUEST_IMAGE).is_ok());
    }
}
