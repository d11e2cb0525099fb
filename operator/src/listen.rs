//! Binding listeners: `[::]` means every address of both families (IPV6_V6ONLY off), so one
//! default serves IPv4, IPv6 and dual-stack clusters. The sidecar compiles this file too
//! (`#[path]` in sidecar/src/lib.rs).

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Binds `addr`. `[::]` accepts IPv4 as well, and becomes `0.0.0.0` on a host without IPv6.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if !matches!(addr, SocketAddr::V6(v6) if v6.ip().is_unspecified()) {
        return plain(addr);
    }
    let ipv4_only = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
    // No IPv6 in this kernel (ipv6.disable=1): not even the socket can be made.
    let Ok(socket) = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)) else {
        return plain(ipv4_only);
    };
    match listen_dual_stack(&socket, addr) {
        Ok(()) => TcpListener::from_std(socket.into()),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => plain(ipv4_only),
        Err(e) => Err(e),
    }
}

fn listen_dual_stack(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    socket.set_only_v6(false)?;
    // As tokio's own bind: a restarted process may rebind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)
}

fn plain(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}
