//! Payloads as raw JSON text, shared without copies.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use sc_protocol::{ErrorName, ScError};

/// A JSON value as raw text: the `data` of a transmit, an invoke or a publish.
///
/// It is a reference-counted slice of the frame it arrived in, so a server that only forwards data
/// (echo, publish) never parses or copies it. Parse it with [`Data::parse`] when the value matters.
///
/// ```
/// use sc_worker::Data;
///
/// let data = Data::from_json(r#"{"username":"alice"}"#).unwrap();
/// #[derive(serde::Deserialize)]
/// struct Login { username: String }
/// assert_eq!(data.parse::<Login>().unwrap().username, "alice");
/// assert_eq!(Data::to(&[1, 2]).unwrap().as_str(), "[1,2]");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Data(Bytes);

impl Data {
    /// Wraps bytes known to be one valid JSON value.
    pub(crate) fn into_bytes(self) -> Bytes {
        self.0
    }

    pub(crate) fn from_trusted(bytes: Bytes) -> Self {
        Data(bytes)
    }

    /// The JSON `null`.
    pub fn null() -> Self {
        Data(Bytes::from_static(b"null"))
    }

    /// Checks that `json` is one JSON value and wraps it.
    pub fn from_json(json: impl Into<String>) -> Result<Self, serde_json::Error> {
        let json = json.into();
        serde_json::from_str::<&RawValue>(&json)?;
        Ok(Data(Bytes::from(json)))
    }

    /// Copies a raw JSON value.
    pub fn from_raw(raw: &RawValue) -> Self {
        Data(Bytes::copy_from_slice(raw.get().as_bytes()))
    }

    /// Serialises `value`.
    pub fn to<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(value).map(|v| Data(Bytes::from(v)))
    }

    /// Deserialises the value.
    pub fn parse<'de, T: Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// The JSON text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the value is the JSON `null`.
    pub fn is_null(&self) -> bool {
        &self.0[..] == b"null"
    }

    /// The value as a `serde_json::Value` (parses it).
    pub fn to_value(&self) -> serde_json::Value {
        self.parse().unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data({})", self.as_str())
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serialises `T` with serde when used as a reply or a payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// What a procedure may return and what [`crate::ScSocket::transmit`] and
/// [`crate::ScHandle::publish`] accept: `()` (no data), [`Data`], `Option<Data>`,
/// `serde_json::Value`, [`Json<T>`], `&str`/`String` (a JSON string) and numbers and booleans.
pub trait IntoData {
    /// Converts to the raw JSON, `None` for "no data" (the `data` key is left out).
    fn into_data(self) -> Result<Option<Data>, ScError>;
}

fn ser_error(e: serde_json::Error) -> ScError {
    ScError::new(ErrorName::InvalidArgumentsError, e.to_string())
}

impl IntoData for () {
    fn into_data(self) -> Result<Option<Data>, ScError> {
        Ok(None)
    }
}

impl IntoData for Data {
    fn into_data(self) -> Result<Option<Data>, ScError> {
        Ok(Some(self))
    }
}

impl IntoData for Option<Data> {
    fn into_data(self) -> Result<Option<Data>, ScError> {
        Ok(self)
    }
}

impl IntoData for serde_json::Value {
    fn into_data(self) -> Result<Option<Data>, ScError> {
        Data::to(&self).map(Some).map_err(ser_error)
    }
}

impl<T: Serialize> IntoData for Json<T> {
    fn into_data(self) -> Result<Option<Data>, ScError> {
        Data::to(&self.0).map(Some).map_err(ser_error)
    }
}

macro_rules! into_data_serialize {
    ($($t:ty),*) => {$(
        impl IntoData for $t {
            fn into_data(self) -> Result<Option<Data>, ScError> {
                Data::to(&self).map(Some).map_err(ser_error)
            }
        }
    )*};
}
into_data_serialize!(&str, String, bool, i32, i64, u32, u64, f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_data_shapes() {
        assert_eq!(().into_data().unwrap(), None);
        assert_eq!("x".into_data().unwrap().unwrap().as_str(), "\"x\"");
        assert_eq!(Json([1]).into_data().unwrap().unwrap().as_str(), "[1]");
        assert!(Data::from_json("{").is_err());
        assert!(Data::null().is_null());
    }
}
