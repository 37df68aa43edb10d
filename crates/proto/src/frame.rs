//! Framing: a 4-byte big-endian length, then that many bytes of CBOR.
//!
//! Decoding is two steps, as in mini-redis: [`check`] looks at buffered
//! bytes and says whether a whole frame is there (or that the announced
//! length is over the limit, before any body byte is read); only then is the
//! body handed to [`crate::message::Frame::decode_body`]. `Incomplete` (read
//! more) is kept apart from invalid input.

/// Length of the prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Default maximum body size: 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Outcome of looking at buffered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Fewer bytes than the prefix and its body; read more.
    Incomplete,
    /// A whole frame: the body is `buf[4..4 + body_len]`.
    Complete { body_len: usize },
}

/// The announced length is over the limit; the connection must be closed
/// after answering, since the stream can no longer be resynchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {announced} bytes exceeds the maximum of {max} bytes")]
pub struct TooLarge {
    pub announced: usize,
    pub max: usize,
}

/// Reads the length prefix, refusing a length over `max` at once.
///
/// # Errors
/// [`TooLarge`] when the prefix announces more than `max` bytes.
pub fn body_len(prefix: [u8; LENGTH_PREFIX], max: usize) -> Result<usize, TooLarge> {
    let announced = u32::from_be_bytes(prefix) as usize;
    if announced > max {
        return Err(TooLarge { announced, max });
    }
    Ok(announced)
}

/// Looks at buffered bytes.
///
/// # Errors
/// [`TooLarge`] as soon as the prefix is readable and over `max`.
pub fn check(buf: &[u8], max: usize) -> Result<Check, TooLarge> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
        return Ok(Check::Incomplete);
    };
    let mut p = [0u8; LENGTH_PREFIX];
    p.copy_from_slice(prefix);
    let body_len = body_len(p, max)?;
    if buf.len() < LENGTH_PREFIX + body_len {
        return Ok(Check::Incomplete);
    }
    Ok(Check::Complete { body_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_waits_for_whole_frames_and_refuses_large_ones_early() {
        assert_eq!(check(&[0, 0], 100), Ok(Check::Incomplete));
        assert_eq!(check(&[0, 0, 0, 3, 1, 2], 100), Ok(Check::Incomplete));
        assert_eq!(
            check(&[0, 0, 0, 3, 1, 2, 3, 9], 100),
            Ok(Check::Complete { body_len: 3 })
        );
        // Only the prefix has arrived, and it is already refused.
        assert_eq!(
            check(&[0, 0, 1, 0], 100),
            Err(TooLarge {
                announced: 256,
                max: 100
            })
        );
    }
}
