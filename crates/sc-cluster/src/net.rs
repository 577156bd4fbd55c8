//! Sockets: the master reserves each child's port for the cluster's life with a bound socket
//! that never listens (`SO_REUSEPORT`), and the child binds the same port with the same option
//! and listens. Nothing else can take the port while a child is being respawned, and a bound
//! socket that does not listen takes no connections.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// The accept queue of every listener: a burst of reconnecting clients waits in it.
const BACKLOG: i32 = 4096;

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A port held for a child: bound, never listening. Port 0 in `addr` picks a free one.
#[derive(Debug)]
pub(crate) struct Reservation {
    _socket: Socket,
    addr: SocketAddr,
}

impl Reservation {
    pub(crate) fn new(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = reuseport_socket(addr)?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        Ok(Reservation {
            _socket: socket,
            addr,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A listener on `addr` (a reserved port) for a child, non-blocking for tokio.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = reuseport_socket(addr)?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_reserved_port_takes_no_connection_until_a_child_listens() {
        let r = Reservation::new("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(r.addr().port(), 0);
        assert!(std::net::TcpStream::connect(r.addr()).is_err());
        let l = listen(r.addr()).unwrap();
        l.set_nonblocking(false).unwrap();
        let c = std::net::TcpStream::connect(r.addr()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
        // Others (without SO_REUSEPORT) cannot take it.
        assert!(std::net::TcpListener::bind(r.addr()).is_err());
    }
}
