//! Reading request lines, with the descriptors sent alongside them, from a control
//! connection.
//!
//! Lines are read with `recvmsg(2)` so `SCM_RIGHTS` descriptors arrive with them (the
//! backing device of `open_fd`). On a Unix stream socket a descriptor rides on the
//! first byte of the `sendmsg` that sent it, and a `recvmsg` that returns descriptors
//! ends with the data they came with. So the descriptors of one read belong to the
//! line holding the read's last byte: the reader tags them with that stream offset and
//! hands them out with that line. Descriptors no line claims are closed.
//!
//! A line longer than [`MAX_LINE`] is not read further ([`Next::TooLong`]).
//!
//! A line may be followed by a binary payload (keyslot areas, a passphrase:
//! [`vmvault_proto::keyslot`]) that the handler reads with [`ConnReader::read_exact`]. The
//! reader's buffer is a locked, zeroized [`SecretBuf`] that never reallocates: payload
//! bytes that arrived with the line pass through it and are zeroed as they are taken.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use vmvault_proto::secret::SecretBuf;

pub use vmvault_proto::protocol::MAX_LINE;

/// Most descriptors taken from one `recvmsg`.
const MAX_FDS: usize = 4;

/// What [`ConnReader::next_line`] found.
#[derive(Debug)]
pub enum Next {
    /// A line (without its newline) and the descriptors sent with it.
    Line(Vec<u8>, Vec<OwnedFd>),
    /// The peer sent more than [`MAX_LINE`] bytes without a newline.
    TooLong,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
    /// Reading failed.
    Err(std::io::Error),
}

/// A line reader over a connected Unix stream socket.
#[derive(Debug)]
pub struct ConnReader {
    fd: RawFd,
    /// Bytes read and not yet handed out (capacity `MAX_LINE + 1`, never grown).
    buf: SecretBuf,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Descriptors with the stream offset of the last byte of the read that brought them.
    fds: VecDeque<(u64, OwnedFd)>,
    eof: bool,
}

impl ConnReader {
    /// A reader on `sock`, which must outlive it.
    pub fn new(sock: &impl AsRawFd) -> Self {
        ConnReader {
            fd: sock.as_raw_fd(),
            buf: SecretBuf::with_capacity(MAX_LINE + 1),
            base: 0,
            fds: VecDeque::new(),
            eof: false,
        }
    }

    /// The next line.
    pub fn next_line(&mut self) -> Next {
        loop {
            if let Some(i) = self.buf.as_slice().iter().position(|&b| b == b'\n') {
                if i > MAX_LINE {
                    return Next::TooLong;
                }
                let start = self.base;
                let end = self.base + i as u64;
                let line = self.buf.as_slice()[..i].to_vec();
                self.buf.drain_front(i + 1);
                self.base = end + 1;
                let mut fds = Vec::new();
                while self.fds.front().is_some_and(|(off, _)| *off <= end) {
                    if let Some((off, fd)) = self.fds.pop_front() {
                        if off >= start {
                            fds.push(fd);
                        }
                    }
                }
                return Next::Line(line, fds);
            }
            if self.buf.len() > MAX_LINE {
                return Next::TooLong;
            }
            if self.eof {
                return Next::Eof;
            }
            match self.recv() {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Next::Err(e),
            }
        }
    }

    /// Fills `out` with the bytes that follow the last line (a payload): first those
    /// already buffered (zeroed in the buffer as they are taken), then straight from
    /// the socket. Descriptors sent with payload bytes are closed. Fails with
    /// `UnexpectedEof` when the peer closes first.
    pub fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let have = self.buf.len().min(out.len());
        out[..have].copy_from_slice(&self.buf.as_slice()[..have]);
        self.buf.drain_front(have);
        self.base += have as u64;
        let mut done = have;
        while done < out.len() {
            // SAFETY: reading into the unfilled tail of `out`, which is live and
            // writable for `out.len() - done` bytes.
            let n =
                unsafe { libc::read(self.fd, out[done..].as_mut_ptr().cast(), out.len() - done) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                self.eof = true;
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n as usize;
            self.base += n as u64;
        }
        Ok(())
    }

    /// One `recvmsg` of up to 16 KiB (never past [`MAX_LINE`] + 1 buffered bytes) and
    /// its descriptors.
    fn recv(&mut self) -> std::io::Result<usize> {
        let room = (MAX_LINE + 1 - self.buf.len().min(MAX_LINE)).min(16 * 1024);
        let old = self.buf.len();
        const SPACE: usize = 64; // >= CMSG_SPACE(MAX_FDS * 4)
        let mut cbuf = [0u64; SPACE / 8];
        let spare = self.buf.spare_mut();
        let room = room.min(spare.len());
        let mut iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: room,
        };
        // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: `msg` describes `room` writable bytes of `self.buf` and `cbuf`, both
        // alive for the call; MSG_CMSG_CLOEXEC marks received descriptors close-on-exec.
        let n = unsafe { libc::recvmsg(self.fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        self.buf.commit(n);
        debug_assert_eq!(self.buf.len(), old + n);
        let last = (self.base + self.buf.len() as u64).saturating_sub(1);
        // SAFETY: walking the control buffer the kernel filled, with the CMSG macros
        // over the same `msg`; each SCM_RIGHTS payload is an array of ints, read
        // unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c);
                    let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                    for k in 0..len / std::mem::size_of::<RawFd>() {
                        let raw = std::ptr::read_unaligned((data as *const RawFd).add(k));
                        // We own every descriptor the kernel installed for us.
                        let fd = OwnedFd::from_raw_fd(raw);
                        if n > 0 && self.fds.len() < MAX_FDS {
                            self.fds.push_back((last, fd));
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use vmvault_proto::sock::send_with_fd;

    #[test]
    fn lines_fds_and_the_cap() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        (&a).write_all(b"{\"cmd\":\"ping\"}\n").unwrap();
        send_with_fd(&a, b"second\n", f.as_raw_fd()).unwrap();
        (&a).write_all(b"third\n").unwrap();
        let mut r = ConnReader::new(&b);
        let Next::Line(l, fds) = r.next_line() else {
            panic!()
        };
        assert_eq!(l, b"{\"cmd\":\"ping\"}");
        assert!(fds.is_empty());
        let Next::Line(l, fds) = r.next_line() else {
            panic!()
        };
        assert_eq!(l, b"second");
        assert_eq!(fds.len(), 1);
        let Next::Line(l, fds) = r.next_line() else {
            panic!()
        };
        assert_eq!(l, b"third");
        assert!(fds.is_empty());
        let big = vec![b'x'; MAX_LINE + 10];
        let t = std::thread::spawn(move || {
            let _ = (&a).write_all(&big);
            a
        });
        assert!(matches!(r.next_line(), Next::TooLong));
        drop(b);
        drop(t.join());
    }

    #[test]
    fn payloads_after_lines() {
        let (a, b) = UnixStream::pair().unwrap();
        // Line and payload in one write: the payload is partly buffered.
        (&a).write_all(b"{\"cmd\":\"x\"}\nPAYLOAD-1next\n").unwrap();
        let mut r = ConnReader::new(&b);
        assert!(matches!(r.next_line(), Next::Line(l, _) if l == b"{\"cmd\":\"x\"}"));
        let mut p = [0u8; 9];
        r.read_exact(&mut p).unwrap();
        assert_eq!(&p, b"PAYLOAD-1");
        assert!(matches!(r.next_line(), Next::Line(l, _) if l == b"next"));
        // A payload larger than the buffer, arriving later.
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let want = big.clone();
        let t = std::thread::spawn(move || {
            (&a).write_all(b"line\n").unwrap();
            (&a).write_all(&big).unwrap();
            (&a).write_all(b"after\n").unwrap();
            a
        });
        assert!(matches!(r.next_line(), Next::Line(l, _) if l == b"line"));
        let mut got = vec![0u8; want.len()];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
        assert!(matches!(r.next_line(), Next::Line(l, _) if l == b"after"));
        // The peer goes away in the middle of a payload.
        let a = t.join().unwrap();
        (&a).write_all(b"short").unwrap();
        drop(a);
        let mut p = [0u8; 10];
        assert_eq!(
            r.read_exact(&mut p).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }
}
