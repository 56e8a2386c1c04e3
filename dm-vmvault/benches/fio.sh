#!/usr/bin/env bash
# fio on a loop device over four FUSE-exported backends, same host, same run:
#   vmvault kvm, vmvault soft (vmvaultd), qemu-storage-daemon LUKS2 (aes-xts-plain64)
#   exported over FUSE, and qemu-storage-daemon raw (an unencrypted FUSE passthrough).
# Usage (root): dm-vmvault/benches/fio.sh [size_mib=256] [runtime_s=8]
# Needs: fio, qemu-img, qemu-storage-daemon, keyctl, python3, a built vmvaultd
# (cargo build --release -p dm-vmvault; VMVAULTD overrides the path).
# Env: FIO_BACKENDS (default "kvm soft qsd-luks passthrough"), FIO_WORKLOADS (default
# "seqread seqwrite randread randwrite"), VMVAULTD_ARGS (e.g. "--vault-vcpus 2");
# VMVAULT_* tuning knobs reach vmvaultd.
set -euo pipefail
SIZE_MIB=${1:-256}
RUNTIME=${2:-8}
BACKENDS=${FIO_BACKENDS:-kvm soft qsd-luks passthrough}
WORKLOADS=${FIO_WORKLOADS:-seqread seqwrite randread randwrite}
want() { [[ " $BACKENDS " == *" $1 "* ]]; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VMVAULTD=${VMVAULTD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/vmvaultd}
[ -x "$VMVAULTD" ] || { echo "build vmvaultd first (cargo build --release -p dm-vmvault)"; exit 1; }
W=$(mktemp -d /tmp/vmvault-fio.XXXXXX)
RUN=$W/run
LOOPS=(); QSD_PIDS=()
cleanup() {
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  [ -S "$RUN/control" ] && ctl '{"cmd":"shutdown"}' >/dev/null 2>&1 || true
  for p in "${QSD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${QSD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
# One request on a fresh connection, after the hello (vmvault-proto's VERSION).
ctl() { python3 - "$RUN/control" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile()
s.sendall(b'{"cmd":"hello","version":1}\n')
hello = json.loads(f.readline())
if hello.get("result") != "ok":
    sys.exit(f"vmvaultd refused the hello: {hello}")
s.sendall(sys.argv[2].encode() + b"\n"); print(f.readline().strip())
PY
}
fio_all() { # $1 label, $2 device
  local dev=$2
  for spec in "seqread:read:1M" "seqwrite:write:1M" "randread:randread:4k" "randwrite:randwrite:4k"; do
    IFS=: read -r name rw bs <<<"$spec"
    [[ " $WORKLOADS " == *" $name "* ]] || continue
    local depth=16; [ "$bs" = 1M ] && depth=4
    local out
    out=$(fio --name=$name --filename="$dev" --rw=$rw --bs=$bs --direct=1 --ioengine=libaio \
          --iodepth=$depth --runtime="$RUNTIME" --time_based --size=$((SIZE_MIB-16))M \
          --output-format=json 2>/dev/null)
    local kind=read; [[ $rw == *write ]] && kind=write
    local bw iops
    bw=$(python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['$kind']; print(round(j['bw_bytes']/1e6,1), round(j['iops']))" <<<"$out")
    echo "$1 $name $bw"
  done
}
RES=$W/results
: > "$RES"

# vmvault kvm and soft on a raw image (same cipher, 4096-byte sectors).
mkdir -p "$RUN"
"$VMVAULTD" --run-dir "$RUN" ${VMVAULTD_ARGS:-} >"$W/vmvaultd.log" 2>&1 &
for _ in $(seq 100); do [ -S "$RUN/control" ] && break; sleep 0.05; done
for b in kvm soft; do
  want $b || continue
  fallocate -l ${SIZE_MIB}M "$W/vv-$b.img"
  serial=$(head -c 64 /dev/urandom | keyctl padd user "vmvault-fio-$b-$$" @u)
  keyctl setperm "$serial" 0x3f030000
  r=$(ctl "{\"cmd\":\"open\",\"name\":\"fio-$b\",\"backing\":\"$W/vv-$b.img\",\"cipher\":\"aes-xts-plain64\",\"key_size\":512,\"sector_size\":4096,\"offset\":32768,\"iv_offset\":0,\"iv_large_sectors\":false,\"size\":null,\"key_serial\":$serial,\"backend\":\"$b\",\"frontend\":\"auto\"}")
  dev=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['reply']['device']) if r['result'] == 'ok' else sys.exit(r['error'])" "$r")
  fio_all "vmvault-$b" "$dev" | tee -a "$RES"
  ctl "{\"cmd\":\"close\",\"name\":\"fio-$b\"}" >/dev/null
done

# qemu-storage-daemon: LUKS2 and raw, each exported over FUSE, then a loop device.
qsd_export() { # $1 label, $2 blockdev json for the top node "top"; sets DEV
  local file=$W/$1.export; : > "$file"
  qemu-storage-daemon --object secret,id=sec0,data=benchpass \
    --blockdev "{\"driver\":\"file\",\"node-name\":\"f0\",\"filename\":\"$W/$1.img\",\"aio\":\"threads\",\"cache\":{\"direct\":true}}" \
    --blockdev "$2" --export type=fuse,id=e0,node-name=top,mountpoint="$file",writable=on \
    >"$W/$1.log" 2>&1 &
  QSD_PIDS+=($!)
  for _ in $(seq 100); do grep -q "$file" /proc/mounts && break; sleep 0.05; done
  local l; l=$(losetup --find --show --direct-io=on --sector-size 4096 "$file")
  LOOPS+=("$l"); DEV=$l
}
if want qsd-luks; then
qemu-img create -q -f luks --object secret,id=sec0,data=benchpass -o key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=10,preallocation=falloc "$W/qsd-luks.img" $((SIZE_MIB-16))M
qsd_export qsd-luks '{"driver":"luks","node-name":"top","file":"f0","key-secret":"sec0"}'
fio_all qsd-luks "$DEV" | tee -a "$RES"
fi
if want passthrough; then
fallocate -l $((SIZE_MIB-16))M "$W/qsd-raw.img"
qsd_export qsd-raw '{"driver":"raw","node-name":"top","file":"f0"}'
fio_all passthrough "$DEV" | tee -a "$RES"
fi

python3 - "$RES" <<'PY'
import sys, collections
r = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    who, wl, mbs, iops = line.split()
    r[wl][who] = (float(mbs), int(iops))
print("\nworkload    " + "".join(f"{w:>16}" for w in ["vmvault-kvm","vmvault-soft","qsd-luks","passthrough"]) + "   kvm/qsd-luks")
for wl in ["seqread","seqwrite","randread","randwrite"]:
    row = r[wl]
    cells = "".join(f"{row.get(w,(0,0))[0]:>10.1f} MB/s" for w in ["vmvault-kvm","vmvault-soft","qsd-luks","passthrough"])
    base = row.get("qsd-luks",(0,0))[0]
    ratio = row.get("vmvault-kvm",(0,0))[0] / base if base else float("nan")
    print(f"{wl:<12}{cells}   {ratio:.2f}x")
PY
