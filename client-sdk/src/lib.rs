//! medrelay client SDK.
