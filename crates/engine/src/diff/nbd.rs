//! A small, blocking NBD client: the fixed newstyle handshake, `NBD_OPT_GO` for one export,
//! then `NBD_CMD_READ` with simple replies and `NBD_CMD_DISC`. Read-only by construction: it
//! never sends a write. Every socket operation has a deadline (the socket's timeouts).
//!
//! The protocol: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERROR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;

const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;

/// The longest read one request asks for (servers accept at least 32 MiB; QEMU does).
pub const MAX_READ: usize = 16 << 20;
/// The longest option reply accepted (an export's description, a block size).
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// What went wrong talking NBD.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed (or its deadline passed).
    #[error("NBD connection")]
    Io(#[from] std::io::Error),
    /// The server said something the protocol does not allow here.
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The server refused the export (`NBD_REP_ERR_*`).
    #[error("the NBD server refused export {name:?} (error {code:#x}): {message}")]
    Refused {
        /// The export asked for.
        name: String,
        /// The reply type.
        code: u32,
        /// What the server said.
        message: String,
    },
    /// A read failed on the server's side.
    #[error("the NBD server failed a read of {len} bytes at {offset} (errno {errno})")]
    Read {
        /// Where.
        offset: u64,
        /// How much.
        len: usize,
        /// The server's error number.
        errno: u32,
    },
}

/// One connection in the transmission phase.
#[derive(Debug)]
pub struct NbdClient {
    stream: UnixStream,
    size: u64,
    next_handle: u64,
    /// Read requests sent.
    pub reads: u64,
}

impl NbdClient {
    /// Connects to the Unix socket `socket` and opens `export`, every step within `timeout`.
    pub fn connect(socket: &Path, export: &str, timeout: Duration) -> Result<Self, NbdError> {
        let stream = UnixStream::connect(socket)?;
        Self::handshake(stream, export, timeout)
    }

    /// The handshake on a connected stream.
    pub fn handshake(
        stream: UnixStream,
        export: &str,
        timeout: Duration,
    ) -> Result<Self, NbdError> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Self { stream, size: 0, next_handle: 1, reads: 0 };
        if c.u64()? != NBDMAGIC || c.u64()? != IHAVEOPT {
            return Err(NbdError::Protocol("not a newstyle NBD server".into()));
        }
        let flags = c.u16()?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Protocol("the server is not fixed-newstyle".into()));
        }
        let client_flags = u32::from(flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        c.stream.write_all(&client_flags.to_be_bytes())?;
        // NBD_OPT_GO: name length, name, no information requests.
        let name = export.as_bytes();
        let name_len = u32::try_from(name.len())
            .map_err(|_| NbdError::Protocol("export name too long".into()))?;
        let mut option = Vec::with_capacity(16 + name.len() + 6);
        option.extend_from_slice(&IHAVEOPT.to_be_bytes());
        option.extend_from_slice(&OPT_GO.to_be_bytes());
        option.extend_from_slice(&(name_len + 6).to_be_bytes());
        option.extend_from_slice(&name_len.to_be_bytes());
        option.extend_from_slice(name);
        option.extend_from_slice(&0u16.to_be_bytes());
        c.stream.write_all(&option)?;
        let mut size = None;
        loop {
            if c.u64()? != REPLY_MAGIC {
                return Err(NbdError::Protocol("bad option reply magic".into()));
            }
            let (opt, kind, len) = (c.u32()?, c.u32()?, c.u32()?);
            if opt != OPT_GO {
                return Err(NbdError::Protocol(format!("a reply to option {opt}, not GO")));
            }
            if len > MAX_OPTION_REPLY {
                return Err(NbdError::Protocol(format!("an option reply of {len} bytes")));
            }
            let mut data = vec![0; len as usize];
            c.stream.read_exact(&mut data)?;
            match kind {
                REP_ACK => break,
                REP_INFO
                    if data.len() >= 12
                        && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
                {
                    let mut b = [0; 8];
                    b.copy_from_slice(&data[2..10]);
                    size = Some(u64::from_be_bytes(b));
                }
                k if k & REP_ERROR_BIT != 0 => {
                    return Err(NbdError::Refused {
                        name: export.to_owned(),
                        code: k,
                        message: String::from_utf8_lossy(&data).into_owned(),
                    });
                }
                // Other replies (a description, a name) are for clients that asked.
                _ => {}
            }
        }
        c.size = size.ok_or_else(|| NbdError::Protocol("no export size before the ack".into()))?;
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `buf.len()` bytes (at most [`MAX_READ`] per request) at `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let mut done = 0;
        while done < buf.len() {
            let len = (buf.len() - done).min(MAX_READ);
            self.read_one(offset + done as u64, &mut buf[done..done + len])?;
            done += len;
        }
        Ok(())
    }

    fn read_one(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.reads += 1;
        let len =
            u32::try_from(buf.len()).map_err(|_| NbdError::Protocol("read too long".into()))?;
        self.stream.write_all(&request(CMD_READ, handle, offset, len))?;
        if self.u32()? != SIMPLE_REPLY_MAGIC {
            return Err(NbdError::Protocol("bad reply magic".into()));
        }
        let errno = self.u32()?;
        if self.u64()? != handle {
            return Err(NbdError::Protocol("a reply to another request".into()));
        }
        if errno != 0 {
            return Err(NbdError::Read { offset, len: buf.len(), errno });
        }
        self.stream.read_exact(buf)?;
        Ok(())
    }

    /// Says goodbye (`NBD_CMD_DISC`); the server closes the connection.
    pub fn disconnect(mut self) {
        let _ = self.stream.write_all(&request(CMD_DISC, 0, 0, 0));
    }

    fn u16(&mut self) -> std::io::Result<u16> {
        let mut b = [0; 2];
        self.stream.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0; 4];
        self.stream.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0; 8];
        self.stream.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
}

fn request(kind: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut r = [0; 28];
    r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    r[4..6].copy_from_slice(&0u16.to_be_bytes());
    r[6..8].copy_from_slice(&kind.to_be_bytes());
    r[8..16].copy_from_slice(&handle.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..28].copy_from_slice(&len.to_be_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_request_is_28_bytes_in_network_order() {
        let r = request(CMD_READ, 7, 0x1000, 512);
        assert_eq!(&r[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&r[6..8], &[0, 0]);
        assert_eq!(&r[8..16], &7u64.to_be_bytes());
        assert_eq!(&r[16..24], &0x1000u64.to_be_bytes());
        assert_eq!(&r[24..28], &512u32.to_be_bytes());
        assert_eq!(&request(CMD_DISC, 0, 0, 0)[6..8], &[0, 2]);
    }

    /// A server that is not NBD (or an old-style one) is refused with a protocol error.
    #[test]
    fn a_server_that_is_not_newstyle_is_refused() {
        let (client, mut server) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let _ = server.write_all(b"NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53");
        });
        let err = NbdClient::handshake(client, "", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, NbdError::Protocol(_)), "{err:?}");
    }

    /// A server that never speaks fails within the deadline, not never.
    #[test]
    fn a_silent_server_times_out() {
        let (client, _server) = UnixStream::pair().unwrap();
        let t0 = std::time::Instant::now();
        let err = NbdClient::handshake(client, "", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, NbdError::Io(_)), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
