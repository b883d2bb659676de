//! The few socket calls neither std nor socket2 wrap: forced buffer sizes, the steering program, the path
//! MTU, and polls with nanosecond timeouts. This is where all of the crate's `unsafe` is: each function that
//! needs it opts out of the workspace's `unsafe_code = "deny"` with its reason, and each unsafe block is one
//! libc call on a borrowed, open descriptor with pointers to live stack values, with a `// SAFETY:` line.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// SO_SNDBUFFORCE: like SO_SNDBUF but past `net.core.wmem_max`; needs CAP_NET_ADMIN (EPERM otherwise).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn set_send_buffer_force(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, clamp(bytes))
}

/// SO_RCVBUFFORCE: like SO_RCVBUF but past `net.core.rmem_max`; needs CAP_NET_ADMIN (EPERM otherwise).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn set_recv_buffer_force(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, clamp(bytes))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn set_send_buffer_force(_fd: BorrowedFd<'_>, _bytes: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn set_recv_buffer_force(_fd: BorrowedFd<'_>, _bytes: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Attaches to a SO_REUSEPORT group (through one of its sockets) the classic BPF program
/// `A = payload[offset..offset + 4] (big-endian); A = A % n; return A`. For UDP the kernel runs it with the
/// packet's data starting at the UDP payload; a load past the end makes it return 0.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn attach_reuseport_steering(fd: BorrowedFd<'_>, offset: u32, n: u32) -> io::Result<()> {
    // Opcodes from linux/filter.h and linux/bpf_common.h.
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
    const BPF_ALU_MOD_K: u16 = 0x94; // BPF_ALU (0x04) | BPF_MOD (0x90) | BPF_K (0x00)
    const BPF_RET_A: u16 = 0x16; // BPF_RET (0x06) | BPF_A (0x10)
    if n == 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut program = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: offset,
        },
        libc::sock_filter {
            code: BPF_ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: n,
        },
        libc::sock_filter {
            code: BPF_RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // The kernel copies the program (through `fprog`'s pointer) during the call.
    set_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn attach_reuseport_steering(
    _fd: BorrowedFd<'_>,
    _offset: u32,
    _n: u32,
) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

fn clamp(bytes: usize) -> libc::c_int {
    libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX)
}

/// setsockopt(2) with `value` as the option's bytes, for options socket2 does not wrap. `T` must be the
/// plain C type the option expects (`c_int`, `sock_fprog`).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(
    unsafe_code,
    reason = "setsockopt(2) for options socket2 does not wrap"
)]
fn set_option<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the call; `value` is a live `T` and we pass its exact size. The
    // kernel copies what it reads before returning.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            socklen_of::<T>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set_option(fd, level, name, &value)
}

/// IP_MTU / IPV6_MTU of a connected socket: the MTU of its route.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(
    unsafe_code,
    reason = "getsockopt(2) for IP_MTU, which socket2 does not wrap"
)]
pub(crate) fn path_mtu(fd: BorrowedFd<'_>, ipv6: bool) -> Option<usize> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: `fd` is an open socket; `value` and `len` are live, and `len` holds the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 || len != socklen_of::<libc::c_int>() {
        return None;
    }
    usize::try_from(value).ok().filter(|&mtu| mtu > 0)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn path_mtu(_fd: BorrowedFd<'_>, _ipv6: bool) -> Option<usize> {
    None
}

/// One ppoll(2) for POLLIN with a nanosecond timeout (None: forever). True when any event is ready
/// (POLLIN, or POLLERR for a pending socket error).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(
    unsafe_code,
    reason = "ppoll(2): nanosecond timeouts that std and socket2 do not offer"
)]
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timespec = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9, so it fits the c_long of every target (an i32 on 32-bit ones).
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timeout_ptr = timespec
        .as_ref()
        .map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: one live pollfd for an open descriptor; the timespec is live or null (wait forever);
    // a null signal mask leaves the mask unchanged.
    let rc = unsafe { libc::ppoll(&mut pollfd, 1, timeout_ptr, std::ptr::null()) };
    match rc {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(pollfd.revents != 0),
    }
}

/// poll(2) elsewhere: the timeout is rounded up to whole milliseconds.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[allow(
    unsafe_code,
    reason = "poll(2) on a socket, which std and socket2 do not offer"
)]
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    /// poll(2)'s timeout for "wait until an event comes".
    const FOREVER: libc::c_int = -1;
    let ms = timeout.map_or(FOREVER, |t| {
        libc::c_int::try_from(t.as_nanos().div_ceil(Duration::from_millis(1).as_nanos()))
            .unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: one live pollfd for an open descriptor.
    let rc = unsafe { libc::poll(&mut pollfd, 1, ms) };
    match rc {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(pollfd.revents != 0),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn socklen_of<T>() -> libc::socklen_t {
    // A c_int's size always fits a socklen_t.
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}
