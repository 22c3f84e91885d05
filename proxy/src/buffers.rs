//! Read buffers: how room is made before a read, the same way on every connection.

use bytes::BytesMut;

/// Makes room for a read of about `size` bytes and returns the room there is. Without this, a
/// buffer whose contents were split off and handed on regrows only 64 bytes a read.
pub fn make_room(buf: &mut BytesMut, size: usize) -> usize {
    if buf.capacity() - buf.len() < size / 2 {
        buf.reserve(size);
    }
    buf.capacity() - buf.len()
}
