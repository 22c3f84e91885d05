//! Picking free loopback TCP ports for server processes.

use std::net::{Ipv4Addr, TcpListener};

/// `preferred` if it can be bound right now, otherwise a port the kernel hands out.
///
/// The port is released before the server binds it, so another process may take it in between;
/// the supervisor notices the failed start and picks again.
pub fn pick(preferred: u16) -> std::io::Result<u16> {
    if preferred != 0 && is_free(preferred) {
        return Ok(preferred);
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_preferred_port_is_replaced() -> std::io::Result<()> {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let taken = held.local_addr()?.port();
        assert!(!is_free(taken));
        assert_ne!(pick(taken)?, taken);
        Ok(())
    }
}
