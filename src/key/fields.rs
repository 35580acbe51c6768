//! Named values read from a request message (a gRPC call's fields), for templates: a plain
//! map as far as keys and policies are concerned; the gRPC layer reads the message.

use std::fmt;
use std::sync::Arc;

/// Named fields of a decoded request message, for key templates, tags and invalidation rules
/// (`user:{id}`): a decoder of `M` and one function per field.
///
/// A message that does not decode makes the call bypass the cache (or, in a rule, skip the
/// templates that need it, with an error logged).
///
/// ```
/// use tower_stash::grpc::Fields;
///
/// struct GetUser { id: u64, region: String }
/// # fn decode(_: &[u8]) -> Option<GetUser> { None }
/// let fields = Fields::decode_with(decode)
///     .field("id", |m: &GetUser| m.id)
///     .field("region", |m: &GetUser| m.region.clone());
/// # let _ = fields;
/// ```
pub struct Fields<M> {
    decode: DecodeFn<M>,
    fields: Vec<(String, FieldFn<M>)>,
}

type DecodeFn<M> = Arc<dyn Fn(&[u8]) -> Option<M> + Send + Sync>;
type FieldFn<M> = Arc<dyn Fn(&M) -> String + Send + Sync>;
type ExtractFn = Arc<dyn Fn(&[u8]) -> Option<Vec<String>> + Send + Sync>;

impl<M> Clone for Fields<M> {
    fn clone(&self) -> Self {
        Self {
            decode: self.decode.clone(),
            fields: self.fields.clone(),
        }
    }
}

impl<M> fmt::Debug for Fields<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Fields").field("names", &names).finish()
    }
}

impl<M: 'static> Fields<M> {
    /// Fields of messages decoded by `decode` (the message bytes, without the gRPC frame).
    pub fn decode_with<D>(decode: D) -> Self
    where
        D: Fn(&[u8]) -> Option<M> + Send + Sync + 'static,
    {
        Self {
            decode: Arc::new(decode),
            fields: Vec::new(),
        }
    }

    /// Fields of a prost message.
    #[cfg(feature = "prost")]
    pub fn prost() -> Self
    where
        M: prost::Message + Default,
    {
        Self::decode_with(|bytes| M::decode(bytes).ok())
    }

    /// Names a field: `{name}` in templates is `value` of the decoded message, escaped as any
    /// key component.
    pub fn field<F, T>(mut self, name: impl Into<String>, value: F) -> Self
    where
        F: Fn(&M) -> T + Send + Sync + 'static,
        T: fmt::Display,
    {
        self.fields
            .push((name.into(), Arc::new(move |m| value(m).to_string())));
        self
    }
}

/// [`Fields`] with the message type erased, as policies and rules hold them.
#[derive(Clone)]
pub(crate) struct MessageFields {
    pub(crate) names: Vec<String>,
    extract: ExtractFn,
}

impl<M: 'static> From<Fields<M>> for MessageFields {
    fn from(f: Fields<M>) -> Self {
        let names = f.fields.iter().map(|(n, _)| n.clone()).collect();
        let Fields { decode, fields } = f;
        Self {
            names,
            extract: Arc::new(move |bytes| {
                let m = decode(bytes)?;
                Some(fields.iter().map(|(_, f)| f(&m)).collect())
            }),
        }
    }
}

impl MessageFields {
    /// The fields of `message`, each value escaped so that the key builder's decoding gives
    /// its bytes back, or `None` when it is not a message of the expected type.
    pub(crate) fn values(&self, message: &[u8]) -> Option<FieldValues> {
        let values = (self.extract)(message)?;
        Some(FieldValues(
            self.names
                .iter()
                .cloned()
                .zip(values.into_iter().map(|v| {
                    percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                }))
                .collect(),
        ))
    }
}

impl fmt::Debug for MessageFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fields")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl PartialEq for MessageFields {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && Arc::ptr_eq(&self.extract, &other.extract)
    }
}

impl Eq for MessageFields {}

/// The named field values of one message (escaped: see [`MessageFields::values`]).
#[derive(Debug, Default)]
pub(crate) struct FieldValues(Vec<(String, String)>);

impl FieldValues {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
