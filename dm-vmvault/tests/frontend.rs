//! The FUSE + loop frontend over the I/O engine with the in-process engine (no daemon,
//! no vault): ext4 on the loop device, remount, fsck, and the raw image decrypts.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use dm_vmvault::crypt::EngineCrypt;
use dm_vmvault::frontend::fuse::FuseExport;
use dm_vmvault::frontend::loopdev::LoopDevice;
use dm_vmvault::io::{IoConfig, IoEngine};
use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};

fn attach(
    img: &std::path::Path,
    mnt: &std::path::Path,
    ss: u32,
    key: &[u8],
) -> (FuseExport, LoopDevice) {
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    let crypt =
        Arc::new(EngineCrypt::new(spec, key, Geometry::new(ss, false, 0).unwrap()).unwrap());
    let cfg = IoConfig {
        backing: img.to_path_buf(),
        offset: vmvault_proto::Sectors(2048),
        len: None,
        readonly: false,
        direct: true,
        allow_discards: false,
    };
    let engine = Arc::new(IoEngine::open(&cfg, crypt).unwrap());
    let fuse = FuseExport::mount(engine, mnt, "volume", "vmvault:test", 2).unwrap();
    let lo = LoopDevice::attach(fuse.file(), false, ss).unwrap();
    (fuse, lo)
}

#[test]
fn ext4_over_fuse_loop_in_process() {
    if !require(&["fuse", "loop", "mkfs.ext4", "fsck.ext4"]) {
        return;
    }
    for ss in [512u32, 4096] {
        let t = TempDir::new("frontend");
        let img = t.path().join("img");
        sparse_image(&img, 33);
        let key = test_key(64, 1);
        let mnt = t.path().join("fuse");
        let fsmp = t.path().join("fs");
        let (fuse, lo) = attach(&img, &mnt, ss, &key);
        eprintln!(
            "ss={ss}: {} direct_io={}",
            lo.path().display(),
            lo.direct_io()
        );
        mkfs_ext4(lo.path());
        mount(lo.path(), &fsmp);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(fsmp.join("a.bin"), &data).unwrap();
        run(&mut Command::new("sync"));
        umount(&fsmp);
        assert!(lo.check_unused().is_ok());
        lo.detach().unwrap();
        fuse.unmount().unwrap();

        // Raw image: the first sector of the data area decrypts to the ext4 boot block
        // area and the superblock magic appears at 1080.
        let raw = std::fs::read(&img).unwrap();
        let mut head = raw[2048 * 512..2048 * 512 + 4096].to_vec();
        let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
        SectorCipher::new(spec, &key)
            .unwrap()
            .decrypt(&Geometry::new(ss, false, 0).unwrap(), 0, &mut head)
            .unwrap();
        assert_eq!(
            &head[1080..1082],
            &[0x53, 0xef],
            "ext4 magic after decryption"
        );

        let (fuse, lo) = attach(&img, &mnt, ss, &key);
        fsck_clean(lo.path());
        mount(lo.path(), &fsmp);
        assert_eq!(std::fs::read(fsmp.join("a.bin")).unwrap(), data);
        umount(&fsmp);
        lo.detach().unwrap();
        fuse.unmount().unwrap();
    }
}
