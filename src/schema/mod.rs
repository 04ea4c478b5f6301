//! How events become rows: names, values and types, table routing, discards.

pub mod intern;
pub mod names;
pub mod rows;
pub mod value;
