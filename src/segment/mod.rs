//! Segment events: the request body, validation, timestamps.

pub mod event;
pub mod json;
pub mod scan;
pub mod time;
