//! AF_PACKET transmit-only socket for frames built in user space: gratuitous
//! ARPs and unsolicited neighbour advertisements with the interface MAC.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sends whole Ethernet frames out of one interface. Opened with protocol
/// 0, so the kernel delivers nothing to it: no receive queue to drain.
pub struct PacketSender {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSender {
    pub fn open(ifindex: u32) -> io::Result<PacketSender> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSender { fd, ifindex })
    }

    /// Sends one Ethernet II frame (destination MAC in bytes 0..6, ethertype
    /// in 12..14). Non-blocking: a full queue is an error the caller counts.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send_frame(&self.fd, self.ifindex, frame)
    }
}

/// Sends `frame` (Ethernet II: destination MAC in bytes 0..6, ethertype
/// in 12..14) out of interface `ifindex` on the AF_PACKET socket `fd`.
pub(crate) fn send_frame(fd: &OwnedFd, ifindex: u32, frame: &[u8]) -> io::Result<()> {
    if frame.len() < 14 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "short frame"));
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    // Already network byte order in the frame.
    sll.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: buf/len describe `frame`, which outlives the call; the
    // address points to a sockaddr_ll of the size we pass.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
