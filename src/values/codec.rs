//! How typed values become bytes: the [`Codec`] trait, [`Json`] (the default) and, with the
//! `msgpack` feature, [`MessagePack`].

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

/// Turns values into bytes and back. Its [`NAME`](Self::NAME) is stored in every entry, so a
/// value written with one codec is never decoded with another: a mismatch reads as a miss
/// (counted in [`Stats::unreadable`](crate::Stats::unreadable)).
///
/// # Example
///
/// ```
/// use tower_stash::values::{Codec, CodecError, Json};
///
/// /// JSON under another name: entries written by `Json` are misses for it.
/// #[derive(Clone, Copy, Default)]
/// struct Json2;
///
/// impl Codec for Json2 {
///     const NAME: &'static str = "json2";
///     fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
///         Json.encode(value)
///     }
///     fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
///         Json.decode(bytes)
///     }
/// }
/// let bytes = Json2.encode(&vec![1, 2]).unwrap();
/// assert_eq!(Json2.decode::<Vec<u8>>(&bytes).unwrap(), [1, 2]);
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The codec's name, stored with each value: an ASCII token such as `json`.
    const NAME: &'static str;

    /// Encodes `value`.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes a value encoded by [`encode`](Self::encode).
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// A value could not be encoded or decoded.
#[derive(Debug)]
pub struct CodecError(Box<dyn std::error::Error + Send + Sync>);

impl CodecError {
    /// Wraps the codec's own error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "value codec error: {}", self.0)
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// JSON, with serde_json: readable in `redis-cli`, the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::new)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::new)
    }
}

/// MessagePack, with rmp-serde (feature `msgpack`): smaller and faster than JSON. Structs are
/// written as maps (field names kept), so adding an optional field stays readable.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

#[cfg(feature = "msgpack")]
impl Codec for MessagePack {
    const NAME: &'static str = "msgpack";

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        rmp_serde::to_vec_named(value).map_err(CodecError::new)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        rmp_serde::from_slice(bytes).map_err(CodecError::new)
    }
}
