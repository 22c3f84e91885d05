//! The readiness probe: a real login as the internal user (`mysql_native_password`) with the
//! database's schema as default. A greeting alone is not enough: the server accepts
//! connections even when its init file failed to create the user.

use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize, MySerialize};
use mysql_common::scramble::scramble_native;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::engine::ProbeError;

async fn read_packet(stream: &mut TcpStream) -> Result<(u8, Vec<u8>), ProbeError> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.map_err(ProbeError::Connect)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.map_err(ProbeError::Connect)?;
    Ok((header[3], payload))
}

fn error_text(payload: &[u8]) -> String {
    // ERR: FF, code (2), '#', SQLSTATE (5), message.
    let code = payload.get(1..3).map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    let message = payload.get(9..).map(String::from_utf8_lossy).unwrap_or_default();
    format!("error {code}: {message}")
}

pub async fn login(port: u16, user: &str, password: &str, schema: &str) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(ProbeError::Connect)?;
    let (seq, greeting) = read_packet(&mut stream).await?;
    if greeting.first() == Some(&0xff) {
        return Err(ProbeError::Unexpected(error_text(&greeting)));
    }
    let handshake = HandshakePacket::deserialize((), &mut ParseBuf(&greeting))
        .map_err(|e| ProbeError::Unexpected(format!("bad greeting: {e}")))?;
    let scramble = scramble_native(&handshake.nonce(), password.as_bytes()).unwrap_or_default();
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_TRANSACTIONS;
    let response = HandshakeResponse::new(
        Some(&scramble[..]),
        (10, 11, 0),
        Some(user.as_bytes()),
        Some(schema.as_bytes()),
        Some(AuthPlugin::MysqlNativePassword),
        caps,
        None,
        16 * 1024 * 1024,
    );
    let mut payload = Vec::new();
    response.serialize(&mut payload);
    let mut packet = (payload.len() as u32).to_le_bytes();
    packet[3] = seq.wrapping_add(1);
    stream.write_all(&packet).await.map_err(ProbeError::Connect)?;
    stream.write_all(&payload).await.map_err(ProbeError::Connect)?;
    let (_, reply) = read_packet(&mut stream).await?;
    match reply.first() {
        Some(0x00) => {
            // COM_QUIT, so the server does not log an aborted connection.
            let _ = stream.write_all(&[1, 0, 0, 0, 0x01]).await;
            Ok(())
        }
        Some(0xff) => Err(ProbeError::Refused(error_text(&reply))),
        // An account made with `mysql_native_password` is never asked to switch: the server
        // asks that of accounts it does not have (so as not to say they do not exist).
        Some(0xfe) => Err(ProbeError::Refused("no such account with a native password".into())),
        _ => Err(ProbeError::Unexpected("unexpected authentication exchange".into())),
    }
}
